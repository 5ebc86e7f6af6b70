# frozen_string_literal: true

# Run: AIOLOCK_LIB=target/debug/libaiolock.so ruby -Iffi/ruby/lib ffi/ruby/test/test_aiolock.rb
# (ffi/test.sh does; the library must be built with the cargo feature test-panic).
require "minitest/autorun"
require "aiolock"

module Aiolock
  module Native
    attach_function :aiolock_test_panic, [], :int
  end
end

class TestAiolock < Minitest::Test
  # The cache under test: $AIOLOCK_TEST_URL, memory:// by default.
  URL = ENV.fetch("AIOLOCK_TEST_URL", "").then { |u| u.empty? ? "memory://" : u }
  # memcached keeps TTLs in whole seconds: a short lease or TTL, and how long after it
  # a key may live (memcached sends ceil(ttl + 0.25) + 2 seconds on its coarse clock:
  # less than ttl + 4.5 s, so that a lease is a floor).
  SHORT, EXPIRY_SLACK = URL.start_with?("memcached") ? [1.0, 5.0] : [0.05, 0.5]
  @@opened = 0

  # Each test opens the cache in a namespace of its own.
  def setup
    @@opened += 1
    sep = URL.include?("?") ? "&" : "?"
    @cache = Aiolock::Cache.open("#{URL}#{sep}namespace=rb#{Process.pid}-#{@@opened}:")
  end

  def teardown
    @cache.close
  end

  # Polls until key is gone (its short TTL ended).
  def wait_until_gone(key)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + SHORT + EXPIRY_SLACK
    until @cache.get(key).nil?
      flunk "#{key.inspect} outlived its TTL" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.01
    end
  end

  # Polls until exactly n callers of cache wait for the lock on key: the ordering hook
  # of the tests, instead of a sleep that hopes the other thread got there. Fails
  # after a generous limit.
  def wait_for_waiters(cache, key, n)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
    until (count = cache.waiting(key)) == n
      flunk "#{count} callers waited for #{key.inspect}, not #{n}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.001
    end
  end

  def test_version
    refute_empty Aiolock.version
  end

  def test_get_set_add_delete
    assert_nil @cache.get("k")
    @cache.set("k", "a\0b\xff".b)
    assert_equal "a\0b\xff".b, @cache.get("k")
    refute @cache.add("k", "x", ttl: 1.0)
    assert @cache.add("empty", "")
    assert_equal "", @cache.get("empty")
    assert @cache.delete("k")
    refute @cache.delete("k")
    @cache.set("short", "v", ttl: SHORT)
    wait_until_gone("short")
  end

  def test_block_form_releases
    result = @cache.redlock("r", lease: 1.0) do |outcome|
      assert_equal :acquired, outcome
      :computed
    end
    assert_equal :computed, result
    # Released: the next caller gets it at once.
    assert_equal :acquired, @cache.redlock("r", lease: 1.0, wait: 0) { |o| o }
  end

  def test_outcomes
    held = @cache.acquire("o", lease: 5.0)
    assert held.acquired?
    assert_equal :timed_out, @cache.redlock("o", lease: 5.0, wait: 0) { |o| o }
    waiter = Thread.new { @cache.redlock("o", lease: 5.0) { |o| o } }
    wait_for_waiters(@cache, "o", 1) # release only once it waits
    assert held.release
    assert_equal :released, waiter.value
    assert_raises(Aiolock::Closed) { held.release }
  end

  def test_waiting
    assert_equal 0, @cache.waiting("w")
    held = @cache.acquire("w", lease: 30.0)
    waiters = Array.new(3) { Thread.new { @cache.redlock("w", lease: 30.0) { |o| o } } }
    wait_for_waiters(@cache, "w", 3)
    assert_equal 0, @cache.waiting("other")
    assert held.release
    assert_equal [:released] * 3, waiters.map(&:value)
    assert_equal 0, @cache.waiting("w")
    cache = Aiolock::Cache.open("memory://")
    cache.close
    assert_raises(Aiolock::Closed) { cache.waiting("w") }
  end

  def test_stale_release_is_owner_checked
    stale = @cache.acquire("s", lease: SHORT)
    wait_until_gone("s-lock") # the lease ends
    current = @cache.acquire("s", lease: 5.0, wait: 0)
    assert current.acquired?
    refute stale.release
    assert current.release
  end

  def test_optimistic_conflict
    @cache.set("n", "1")
    lock = @cache.optimistic("n")
    assert_equal "1", lock.value
    @cache.set("n", "5")
    error = assert_raises(Aiolock::Conflict) { lock.cas("2") }
    assert_equal 3, error.status
    assert_match(/changed/, error.message)
    assert_raises(Aiolock::Closed) { lock.cas("2") }
    @cache.optimistic("n") { |l| l.cas("6", ttl: 60) }
    assert_equal "6", @cache.get("n")
    absent = @cache.optimistic("absent")
    refute absent.found?
    assert_nil absent.value
    absent.close
  end

  def test_bad_input
    assert_raises(Aiolock::InvalidArgument) { Aiolock::Cache.open("memory://?namespace=\xff".b) }
    error = assert_raises(Aiolock::InvalidArgument) { Aiolock::Cache.open("nosuch://x") }
    assert_match(/nosuch/, error.message)
    [0, -1, Float::NAN, Float::INFINITY].each do |lease|
      assert_raises(Aiolock::InvalidArgument) { @cache.acquire("k", lease: lease) }
    end
    [Float::NAN, Float::INFINITY, -Float::INFINITY, 5e-324].each do |wait|
      assert_raises(Aiolock::InvalidArgument) { @cache.acquire("k", lease: 1, wait: wait) }
    end
    error = assert_raises(Aiolock::InvalidArgument) { @cache.set("k", "v", ttl: 5e-324) }
    assert_operator error.message.length, :<, 160
    error = assert_raises(Aiolock::InvalidArgument) { Aiolock::Cache.open("memory://?respone_timeout=1") }
    assert_match(/respone_timeout/, error.message)
    assert_raises(Aiolock::InvalidKey) { @cache.acquire("", lease: 1) }
    assert_raises(Aiolock::InvalidArgument) { @cache.set("k", "v", ttl: -1) }
  end

  def test_lock_suffix
    cache = Aiolock::Cache.open("memory://?lock_suffix=.l")
    lock = cache.acquire("job", lease: 5)
    refute_nil cache.get("job.l")
    assert_nil cache.get("job-lock")
    lock.release
    assert_raises(Aiolock::InvalidArgument) { Aiolock::Cache.open("memory://?lock_suffix=") }
  ensure
    cache&.close
  end

  def test_closed_cache
    cache = Aiolock::Cache.open("memory://")
    cache.close
    assert_raises(Aiolock::Closed) { cache.get("k") }
    cache.close
  end

  # close waits for the calls in flight on other threads instead of freeing under them.
  def test_close_waits_for_calls_in_flight
    cache = Aiolock::Cache.open("memory://")
    held = cache.acquire("k", lease: 30.0)
    waiter = Thread.new { cache.redlock("k", lease: 30.0) { |o| o } }
    wait_for_waiters(cache, "k", 1) # the call is in flight
    closer = Thread.new { cache.close }
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
    sleep 0.001 until closer.stop? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    assert closer.alive?, "close returned while a call was in flight"
    # The waiter ends only with this release: close cannot have freed the cache yet.
    assert held.release
    assert_equal :released, waiter.value
    closer.join
    assert cache.closed?
  end

  def test_panic_is_an_error_and_the_process_lives
    assert_equal 10, Aiolock::Native.aiolock_test_panic
    assert_match(/panicked/, Aiolock::Native.aiolock_last_error_message)
    assert @cache.add("after-panic", "v")
  end

  # The stampede oracle: many threads want one value; it is computed once.
  def test_stampede
    computed = 0
    mutex = Mutex.new
    threads = Array.new(16) do
      Thread.new do
        value = nil
        100.times do
          value = @cache.get("report") and break
          @cache.redlock("report", lease: 30.0) do |outcome|
            if outcome == :acquired && @cache.get("report").nil?
              mutex.synchronize { computed += 1 }
              # The expensive part lasts until every other thread found the cache
              # empty and waits for this one.
              wait_for_waiters(@cache, "report", 15)
              @cache.set("report", "computed")
            end
          end
        end
        value
      end
    end
    assert_equal ["computed"] * 16, threads.map(&:value)
    assert_equal 1, computed
  end

  # blocking: true releases the GVL: another thread keeps running during a wait. Here
  # it sees the waiter waiting and releases the lock, which wakes the waiter; with the
  # GVL held by the waiting call, this thread could not run until the wait bound
  # passed, and the waiter would time out.
  def test_other_threads_run_while_one_waits
    held = @cache.acquire("w", lease: 30.0)
    waiter = Thread.new { @cache.redlock("w", lease: 30.0, wait: 10.0) { |o| o } }
    sleep 0.001 until @cache.waiting("w") == 1 || !waiter.alive?
    assert waiter.alive?, -> { "the VM stalled during the wait (the waiter returned #{waiter.value})" }
    assert held.release
    assert_equal :released, waiter.value
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # The block form holds the lock during the block, returns its value and releases.
  def test_lock_block_form
    value = @cache.lock("x", lease: 30.0) do |guard|
      refute guard.released?
      assert_nil @cache.try_lock("x", lease: 30.0), "held during the block"
      42
    end
    assert_equal 42, value
    guard = @cache.try_lock("x", lease: 30.0)
    refute_nil guard, "released after the block"
    assert guard.release
    # A block that releases the guard itself: nothing left to release after it.
    assert_equal :done, @cache.lock("x", lease: 30.0) { |g| g.release ? :done : :lost }
  end

  # A block that raises releases the lock too, and its exception comes out.
  def test_lock_block_releases_on_exception
    assert_raises(ZeroDivisionError) do
      @cache.lock("x", lease: 30.0) { 1 / 0 }
    end
    guard = @cache.try_lock("x", lease: 30.0)
    refute_nil guard, "released after the exception"
    assert guard.release
  end

  # The guard form: release says whether it removed the lock, once.
  def test_lock_guard_form
    guard = @cache.lock("g", lease: 30.0, wait: 1.0)
    assert_instance_of Aiolock::Exclusive, guard
    assert_nil @cache.try_lock("g", lease: 30.0)
    assert guard.release
    assert guard.released?
    assert_raises(Aiolock::Closed) { guard.release }
    # A holder whose lease ended: its release removes nothing.
    stale = @cache.lock("s", lease: SHORT, wait: 0)
    wait_until_gone("s-lock")
    current = @cache.try_lock("s", lease: 30.0)
    refute_nil current
    refute stale.release
    assert current.release
  end

  # Not acquired: try_lock returns nil at once, lock by its wait bound; the block
  # forms raise NotAcquired without running the block.
  def test_lock_not_acquired
    held = @cache.try_lock("n", lease: 30.0)
    start = monotonic
    assert_nil @cache.try_lock("n", lease: 30.0)
    assert_nil @cache.lock("n", lease: 30.0, wait: 0)
    assert_operator monotonic - start, :<, 5.0, "try_lock never waits (the lease is 30 s)"
    start = monotonic
    assert_nil @cache.lock("n", lease: 30.0, wait: 0.3)
    took = monotonic - start
    assert_operator took, :>=, 0.29
    assert_operator took, :<, 5.3, "returned by its bound, not the 30 s lease"
    ran = false
    error = assert_raises(Aiolock::NotAcquired) { @cache.lock("n", lease: 30.0, wait: 0.05) { ran = true } }
    assert_kind_of Aiolock::Error, error
    assert_nil error.status
    assert_raises(Aiolock::NotAcquired) { @cache.try_lock("n", lease: 30.0) { ran = true } }
    refute ran
    assert held.release
  end

  # An exclusive waiter waits through the release and then holds the lock; the main
  # thread runs meanwhile (blocking: true releases the GVL).
  def test_lock_waits_until_held
    held = @cache.try_lock("e", lease: 30.0)
    waiter = Thread.new { @cache.lock("e", lease: 30.0, wait: 60.0) }
    wait_for_waiters(@cache, "e", 1)
    assert waiter.alive?
    assert held.release
    guard = waiter.value
    refute_nil guard, "held after the release"
    assert_equal :timed_out, @cache.acquire("e", lease: 1.0, wait: 0).tap(&:release).outcome, "a RedLock on the key"
    assert guard.release
  end

  # Threads take the lock in turn: never two inside, every entry happens.
  def test_lock_mutual_exclusion
    inside = 0
    overlaps = 0
    entries = 0
    count = Mutex.new
    threads = Array.new(8) do
      Thread.new do
        15.times do
          @cache.lock("m", lease: 30.0, wait: 120.0) do
            count.synchronize { overlaps += 1 unless (inside += 1) == 1 }
            Thread.pass
            count.synchronize do
              inside -= 1
              entries += 1
            end
          end
        end
      end
    end
    threads.each(&:join)
    assert_equal 0, overlaps
    assert_equal 8 * 15, entries
  end

  def test_lock_bad_input
    [0.0, -1.0, Float::NAN, Float::INFINITY].each do |lease|
      assert_raises(Aiolock::InvalidArgument) { @cache.lock("b", lease: lease) }
    end
    [-1.0, -Float::INFINITY, Float::NAN, Float::INFINITY].each do |wait|
      error = assert_raises(Aiolock::InvalidArgument) { @cache.lock("b", lease: 1.0, wait: wait) }
      assert_match(/wait_secs/, error.message)
    end
    assert_raises(ArgumentError) { @cache.lock("b", lease: "soon") }
    assert_raises(Aiolock::InvalidKey) { @cache.lock("", lease: 1.0) }
    # Keys are bytes.
    guard = @cache.try_lock("\xff\xfe".b, lease: 1.0)
    refute_nil guard
    assert guard.release
    closed = Aiolock::Cache.open("memory://")
    closed.close
    assert_raises(Aiolock::Closed) { closed.lock("b", lease: 1.0) }
  end

  # ---- The lease API: fenced:, extend, lease_remaining, watchdog:, lost?, check! ----

  # A lease the watchdog renews every third of it (memcached counts whole seconds).
  WATCH_LEASE = URL.start_with?("memcached") ? 1.0 : 0.3

  # Polls until the watchdog reports the loss of guard (bounded).
  def wait_until_lost(guard)
    deadline = monotonic + 30
    until guard.lost?
      flunk "the loss was never reported" if monotonic > deadline
      sleep 0.005
    end
  end

  def test_fences_grow
    previous = 0
    4.times do
      @cache.redlock("f", lease: 30.0, wait: 0, fenced: true) do |outcome, lock|
        assert_equal :acquired, outcome
        assert_operator lock.fence, :>, previous
        previous = lock.fence
        waiter = @cache.acquire("f", lease: 30.0, wait: 0, fenced: true)
        assert_equal :timed_out, waiter.outcome
        assert_nil waiter.fence, "a caller without the lock has no fence"
        waiter.release
      end
      @cache.lock("f", lease: 30.0, fenced: true) do |guard|
        assert_operator guard.fence, :>, previous
        previous = guard.fence
      end
    end
    guard = @cache.try_lock("f", lease: 30.0)
    assert_nil guard.fence, "unfenced"
    assert guard.release
    assert_nil guard.fence, "released"
  end

  def test_extend_and_lease_remaining
    lock = @cache.acquire("x", lease: 20.0)
    assert_operator lock.lease_remaining, :>, 10.0
    assert_same lock, lock.extend(60.0)
    assert_operator lock.lease_remaining, :>, 50.0
    [0.0, -1.0, Float::NAN, Float::INFINITY].each do |bad|
      error = assert_raises(Aiolock::InvalidArgument) { lock.extend(bad) }
      assert_match(/lease_secs/, error.message)
    end
    assert_raises(ArgumentError) { lock.extend("soon") }
    # Object#extend still mixes modules in.
    lock.extend(Comparable)
    assert_kind_of Comparable, lock
    waiter = @cache.acquire("x", lease: 1.0, wait: 0)
    assert_raises(Aiolock::Lost) { waiter.extend(1.0) }
    assert_equal 0.0, waiter.lease_remaining
    waiter.release
    # Shortened, then gone: Lost (status 11), and the release removes nothing.
    lock.extend(SHORT)
    wait_until_gone("x-lock")
    assert_equal 0.0, lock.lease_remaining
    error = assert_raises(Aiolock::Lost) { lock.extend(5.0) }
    assert_equal Aiolock::LOST, error.status
    assert_match(/no longer ours/, error.message)
    refute lock.release
    assert_raises(Aiolock::Closed) { lock.extend(5.0) }
    assert_equal 0.0, lock.lease_remaining

    # The exclusive lock, extended past its first lease: nobody else gets it.
    guard = @cache.try_lock("y", lease: SHORT * 2)
    guard.extend(60.0)
    sleep SHORT * 2 + EXPIRY_SLACK # the first lease would have ended by now
    assert_nil @cache.try_lock("y", lease: 1.0)
    assert guard.release
  end

  # The watchdog keeps the lock while the work lasts several leases: another caller,
  # polling all along, never gets it; lost? stays false.
  def test_watchdog_keeps_the_lock
    @cache.lock("k", lease: WATCH_LEASE, watchdog: true) do |guard|
      lock = @cache.acquire("r", lease: WATCH_LEASE, wait: 0, watchdog: true)
      assert lock.acquired?
      finish = monotonic + WATCH_LEASE * 4 + EXPIRY_SLACK
      while monotonic < finish
        assert_nil @cache.try_lock("k", lease: 1.0), "another caller got a watched lock"
        assert_equal :timed_out, @cache.redlock("r", lease: 1.0, wait: 0) { |o| o }
        refute guard.lost?
        assert_same lock, lock.check!
        sleep 0.05
      end
      assert_operator guard.lease_remaining, :>, 0.0
      assert lock.release
    end
    refute_nil @cache.try_lock("k", lease: 1.0)&.tap(&:release), "released after the block"
  end

  # The lock key is deleted behind the holder's back: the watchdog's next renewal
  # finds it gone; lost? turns true, check! and extend raise Lost, release says false.
  def test_watchdog_reports_a_loss
    guard = @cache.try_lock("l", lease: WATCH_LEASE, watchdog: true)
    guard.check!
    assert @cache.delete("l-lock")
    wait_until_lost(guard)
    error = assert_raises(Aiolock::Lost) { guard.check! }
    assert_match(/no longer ours/, error.message)
    assert_raises(Aiolock::Lost) { guard.extend(1.0) }
    refute guard.release
    assert_raises(Aiolock::Closed) { guard.check! }
    assert_raises(Aiolock::Closed) { guard.lost? }
  end

  def test_lost_check_needs_the_watchdog
    guard = @cache.try_lock("u", lease: 30.0)
    error = assert_raises(Aiolock::InvalidArgument) { guard.lost? }
    assert_match(/AIOLOCK_WATCHDOG/, error.message)
    assert_raises(Aiolock::InvalidArgument) { guard.check! }
    guard.release
    # A watched RedLock caller that did not get the lock: nothing held, Lost.
    held = @cache.acquire("u", lease: 30.0)
    waiter = @cache.acquire("u", lease: 30.0, wait: 0, watchdog: true)
    assert waiter.lost?
    waiter.release
    held.release
    assert_raises(Aiolock::InvalidArgument) { @cache.lock("u", lease: 0.0, watchdog: true, fenced: true) }
  end

  # The block forms with the options: the guard (and for redlock the Lock) is
  # yielded, released after the block, also after a loss.
  def test_block_forms_with_options
    value = @cache.lock("b", lease: WATCH_LEASE, watchdog: true, fenced: true) do |guard|
      guard.check!
      refute_nil guard.fence
      assert @cache.delete("b-lock")
      wait_until_lost(guard)
      assert_raises(Aiolock::Lost) { guard.check! }
      :ran
    end
    assert_equal :ran, value
    outcome = @cache.redlock("b", lease: 5.0, fenced: true) do |o, lock|
      assert lock.release # released inside the block: nothing left after it
      o
    end
    assert_equal :acquired, outcome
  end
end
