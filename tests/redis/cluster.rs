//! Redis Cluster-only tests (the generic suite runs on a cluster through
//! `backend_suite!(redis_cluster, …)`).
