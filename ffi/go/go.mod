module aiolock.dev/ffi/go

go 1.19
