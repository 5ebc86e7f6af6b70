# frozen_string_literal: true

# The Ruby bindings of libaiolock. The gem holds Ruby code only (over the ffi gem);
# it finds the C library at run time by ENV["AIOLOCK_LIB"] or pkg-config (see
# Aiolock.library_candidates). Build and install:
#   ffi/install.sh /usr/local        # libaiolock, aiolock.h, aiolock.pc
#   cd ffi/ruby && gem build aiolock.gemspec && gem install --local aiolock-*.gem
require_relative "lib/aiolock/version"

Gem::Specification.new do |spec|
  spec.name = "aiolock"
  spec.version = Aiolock::VERSION
  spec.summary = "RedLock, exclusive lock and OptimisticLock (aiocache.lock) over memory, Redis and memcached"
  spec.description = <<~TEXT
    Ruby bindings of libaiolock, the C library of aiolock: a cache-stampede RedLock
    whose waiters in every process wake on the release, an exclusive lock with
    fencing tokens, extend and a watchdog, and an OptimisticLock (CAS), over an
    in-process memory cache, Redis or memcached chosen by URL.
  TEXT
  spec.authors = ["aiolock developers"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.0"
  spec.files = Dir.chdir(__dir__) { Dir["lib/**/*.rb"] + ["README.md"] }
  spec.require_paths = ["lib"]
  spec.add_dependency "ffi", "~> 1.15"
  spec.requirements << "libaiolock #{Aiolock::VERSION} (ffi/install.sh of the aiolock repository), " \
                       "found by AIOLOCK_LIB or pkg-config"
end
