# frozen_string_literal: true

# A script outside the repository that uses the installed aiolock gem (which finds the
# installed libaiolock by pkg-config). ffi/install-test.sh runs it.
# Usage: ruby main.rb VERSION GEM_DIR PREFIX
version, gem_dir, prefix = ARGV
gem "aiolock", "= #{version}"
require "aiolock"

def check(ok, message)
  return if ok

  warn "ruby consumer: #{message}"
  exit 1
end

spec = Gem.loaded_specs.fetch("aiolock")
check(spec.full_gem_path.start_with?(gem_dir), "aiolock loaded from #{spec.full_gem_path}, not the installed gem")
library = Aiolock::Native.ffi_libraries.map(&:name).join(", ")
check(library.start_with?("#{prefix}/lib/"), "libaiolock loaded from #{library}, not from the prefix pkg-config names")
check(Aiolock.version == version, "libaiolock #{Aiolock.version}, expected #{version}")
cache = Aiolock::Cache.open("memory://?namespace=consumer:")
lock = cache.acquire("job", lease: 30.0)
check(lock.outcome == :acquired, "not acquired: #{lock.outcome}")
check(cache.try_lock("job", lease: 30.0).nil?, "a held key was taken again")
check(lock.release == true, "the release removed nothing")
puts "ruby: acquired, held, released (libaiolock #{Aiolock.version}, gem #{spec.version})"
