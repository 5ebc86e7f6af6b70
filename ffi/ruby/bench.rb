# frozen_string_literal: true

# The Ruby side of ffi/bench.sh: memory-backend acquire + release through the C ABI.
# Prints "ns_per_op <n>" (best of 5). Usage: ruby -Iffi/ruby/lib ffi/ruby/bench.rb [iterations]
require "aiolock"

iterations = Integer(ARGV.fetch(0, "20000"))
cache = Aiolock::Cache.open("memory://")
best = Float::INFINITY
5.times do
  start = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  iterations.times do
    lock = cache.acquire("bench", lease: 10.0)
    raise "not removed" unless lock.release
  end
  best = [best, (Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - start).fdiv(iterations)].min
end
puts format("ns_per_op %.1f", best)
