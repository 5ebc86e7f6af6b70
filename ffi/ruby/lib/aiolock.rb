# frozen_string_literal: true

require "ffi"
require_relative "aiolock/version"

# Ruby bindings of libaiolock: a cache-stampede RedLock and an OptimisticLock
# (Python aiocache's locks), and an exclusive lock (a mutex with a lease) over a
# memory, Redis or memcached cache chosen by URL.
#
#   cache = Aiolock::Cache.open("memory://?namespace=app:")
#   value = cache.get("report") || cache.redlock("report", lease: 5.0) do |outcome|
#     if outcome == :acquired
#       cache.set("report", compute)
#     else
#       cache.get("report") # :released: the holder stored it; :timed_out: compute
#     end
#   end
#
#   cache.lock("account:42", lease: 30.0, wait: 10.0) do
#     # ... read, change and write the account: no other caller is inside ...
#   end # released here, also when the block raises; Aiolock::NotAcquired if the
#       # lock stayed held by others for 10 s
#
# The library is loaded from ENV["AIOLOCK_LIB"] (a path), else from the libdir that
# pkg-config names for aiolock (ffi/install.sh installs aiolock.pc), else as "aiolock"
# from the system's library path. Calls that may wait are attached with `blocking: true`, so
# they release the GVL: other Ruby threads run while one waits.
module Aiolock
  # Where libaiolock may be, in the order tried: ENV["AIOLOCK_LIB"] alone when set;
  # else PKG-CONFIG-LIBDIR/libaiolock.so (.dylib on macOS) when pkg-config knows
  # aiolock, then "aiolock" on the system's library path.
  def self.library_candidates
    explicit = ENV.fetch("AIOLOCK_LIB", "")
    return [explicit] unless explicit.empty?

    libdir = begin
      IO.popen(["pkg-config", "--variable=libdir", "aiolock"], err: File::NULL, &:read).strip
    rescue SystemCallError # no pkg-config
      ""
    end
    candidates = libdir.empty? ? [] : [File.join(libdir, FFI.map_library_name("aiolock"))]
    candidates << "aiolock"
  end

  # The raw C functions (include/aiolock.h).
  module Native
    extend FFI::Library
    # One array argument: its first name that loads.
    ffi_lib Aiolock.library_candidates

    typedef :pointer, :cache
    typedef :pointer, :lock
    typedef :pointer, :optimistic
    typedef :pointer, :exclusive

    attach_function :aiolock_version, [], :string
    attach_function :aiolock_status_str, [:int], :string
    attach_function :aiolock_last_error_message, [], :string
    attach_function :aiolock_cache_open, %i[string pointer], :int, blocking: true
    attach_function :aiolock_cache_free, %i[cache], :void, blocking: true
    attach_function :aiolock_acquire, %i[cache pointer size_t double double pointer pointer], :int, blocking: true
    attach_function :aiolock_release, %i[lock pointer], :int, blocking: true
    attach_function :aiolock_exclusive_acquire, %i[cache pointer size_t double double pointer], :int, blocking: true
    attach_function :aiolock_exclusive_release, %i[exclusive pointer], :int, blocking: true
    attach_function :aiolock_exclusive_free, %i[exclusive], :void, blocking: true
    attach_function :aiolock_acquire_ex, %i[cache pointer size_t double double uint32 pointer pointer], :int,
                    blocking: true
    attach_function :aiolock_exclusive_acquire_ex, %i[cache pointer size_t double double uint32 pointer], :int,
                    blocking: true
    # The lease functions: extend sends a renewal (blocking); the others read the handle.
    attach_function :aiolock_lock_extend, %i[lock double], :int, blocking: true
    attach_function :aiolock_lock_fence, %i[lock pointer pointer], :int
    attach_function :aiolock_lock_lease_remaining, %i[lock pointer], :int
    attach_function :aiolock_lock_check, %i[lock], :int
    attach_function :aiolock_exclusive_extend, %i[exclusive double], :int, blocking: true
    attach_function :aiolock_exclusive_fence, %i[exclusive pointer pointer], :int
    attach_function :aiolock_exclusive_lease_remaining, %i[exclusive pointer], :int
    attach_function :aiolock_exclusive_check, %i[exclusive], :int
    attach_function :aiolock_optimistic_begin, %i[cache pointer size_t pointer], :int, blocking: true
    attach_function :aiolock_optimistic_value, %i[optimistic pointer pointer pointer], :int
    attach_function :aiolock_cas, %i[optimistic pointer size_t double], :int, blocking: true
    attach_function :aiolock_optimistic_free, %i[optimistic], :void
    attach_function :aiolock_cache_get, %i[cache pointer size_t pointer pointer pointer], :int, blocking: true
    attach_function :aiolock_buffer_free, %i[pointer size_t], :void
    attach_function :aiolock_cache_set, %i[cache pointer size_t pointer size_t double], :int, blocking: true
    attach_function :aiolock_cache_add, %i[cache pointer size_t pointer size_t double pointer], :int, blocking: true
    attach_function :aiolock_cache_delete, %i[cache pointer size_t pointer], :int, blocking: true
    attach_function :aiolock_cache_waiting, %i[cache pointer size_t pointer], :int
  end

  # Status codes (stable numbers, see include/aiolock.h).
  OK = 0
  LOST = 11
  WAIT_DEFAULT = -1.0
  # Flags of the _ex acquisitions.
  FENCED = 1
  WATCHDOG = 2
  OUTCOMES = { 1 => :acquired, 2 => :released, 3 => :timed_out }.freeze

  # A failed call: #status is the C status code, #message the library's message.
  class Error < StandardError
    attr_reader :status

    def initialize(message, status = nil)
      super(message)
      @status = status
    end
  end
  class InvalidArgument < Error; end
  class InvalidKey < Error; end
  # OptimisticLock#cas: the key changed since the lock began; nothing was written.
  class Conflict < Error; end
  class Timeout < Error; end
  class ConnectionError < Error; end
  class ProtocolError < Error; end
  class BackendError < Error; end
  class Unsupported < Error; end
  # A bug in aiolock was caught at the C boundary; the process goes on.
  class Panic < Error; end
  # The lock is no longer this guard's: its lease ended (another caller may hold it),
  # it was deleted, or the guard never held it (#extend, #check!). Stop the work that
  # needed the lock.
  class Lost < Error; end
  # A call on a closed cache, a released lock or a used optimistic lock.
  class Closed < Error; end
  # Cache#lock or #try_lock with a block: the lock was held by other callers for the
  # whole wait (not a failure of the backend: #status is nil). The block did not run.
  class NotAcquired < Error; end

  ERRORS = {
    1 => InvalidArgument, 2 => InvalidKey, 3 => Conflict, 4 => Timeout, 5 => ConnectionError,
    6 => ProtocolError, 7 => BackendError, 8 => Unsupported, 10 => Panic, 11 => Lost
  }.freeze

  # Raises the error of a non-zero status. Ruby threads are OS threads, so the
  # thread-local last error read here is the one of the call just made.
  def self.check(status)
    return if status == OK

    message = Native.aiolock_last_error_message
    raise ERRORS.fetch(status, Error).new(message, status)
  end

  def self.version = Native.aiolock_version

  # A string's bytes in C memory, for the duration of a block.
  def self.with_bytes(string)
    string = string.to_s.b
    return yield(nil, 0) if string.empty?

    FFI::MemoryPointer.new(:uint8, string.bytesize) do |buf|
      buf.put_bytes(0, string)
      return yield(buf, string.bytesize)
    end
  end

  def self.ttl_secs(ttl) = ttl.nil? ? 0.0 : Float(ttl)

  def self.flags(fenced, watchdog) = (fenced ? FENCED : 0) | (watchdog ? WATCHDOG : 0)

  # A cache opened from a URL. Safe to share between threads.
  class Cache
    # Opens the cache a URL names ("memory://", "redis://…", "memcached://…").
    # Query options: namespace, lock_suffix (default "-lock"), connect_timeout,
    # response_timeout (seconds), pool_size, and the backend's own; an unknown
    # option raises Aiolock::InvalidArgument.
    # With a block, yields the cache and closes it afterwards.
    def self.open(url)
      out = FFI::MemoryPointer.new(:pointer)
      Aiolock.check(Native.aiolock_cache_open(url, out))
      cache = new(FFI::AutoPointer.new(out.read_pointer, Native.method(:aiolock_cache_free)))
      return cache unless block_given?

      begin
        yield cache
      ensure
        cache.close
      end
    end

    def initialize(ptr) # :nodoc:
      @ptr = ptr
      @mutex = Mutex.new
      @idle = ConditionVariable.new
      @in_flight = 0
    end

    # Frees the cache, after the calls in flight on other threads return (else the
    # garbage collector frees it). Locks taken from it stay valid.
    def close
      ptr = @mutex.synchronize do
        @idle.wait(@mutex) while @in_flight.positive?
        taken = @ptr
        @ptr = nil
        taken
      end
      ptr&.free
      nil
    end

    def closed? = @ptr.nil?

    # The value of key (a binary String), or nil.
    def get(key)
      data = FFI::MemoryPointer.new(:pointer)
      len = FFI::MemoryPointer.new(:size_t)
      found = FFI::MemoryPointer.new(:bool)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle { |h| Aiolock.check(Native.aiolock_cache_get(h, k, kn, data, len, found)) }
      end
      return nil unless found.read(:bool)

      ptr = data.read_pointer
      return "".b if ptr.null?

      n = len.read(:size_t)
      value = ptr.read_bytes(n)
      Native.aiolock_buffer_free(ptr, n)
      value
    end

    # Stores value under key; it expires after ttl seconds (nil: never).
    def set(key, value, ttl: nil)
      Aiolock.with_bytes(key) do |k, kn|
        Aiolock.with_bytes(value) do |v, vn|
          with_handle { |h| Aiolock.check(Native.aiolock_cache_set(h, k, kn, v, vn, Aiolock.ttl_secs(ttl))) }
        end
      end
      value
    end

    # Stores value only if key is absent; returns whether it did.
    def add(key, value, ttl: nil)
      added = FFI::MemoryPointer.new(:bool)
      Aiolock.with_bytes(key) do |k, kn|
        Aiolock.with_bytes(value) do |v, vn|
          with_handle { |h| Aiolock.check(Native.aiolock_cache_add(h, k, kn, v, vn, Aiolock.ttl_secs(ttl), added)) }
        end
      end
      added.read(:bool)
    end

    # Removes key; returns whether it was present.
    def delete(key)
      deleted = FFI::MemoryPointer.new(:bool)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle { |h| Aiolock.check(Native.aiolock_cache_delete(h, k, kn, deleted)) }
      end
      deleted.read(:bool)
    end

    # How many callers of this cache in this process are waiting for the RedLock on
    # key right now (their acquire found it held): for stampede monitoring, and for
    # tests that must release only once N callers wait (poll it; never sleep a fixed
    # time and hope). Callers in other processes, or of another Cache opened on the
    # same server, are not counted. Sends nothing to the backend.
    def waiting(key)
      count = FFI::MemoryPointer.new(:size_t)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle { |h| Aiolock.check(Native.aiolock_cache_waiting(h, k, kn, count)) }
      end
      count.read(:size_t)
    end

    # Takes the RedLock on key (held at most lease seconds) or waits for its holder
    # (at most wait seconds, default one lease). With a block, yields the outcome
    # (:acquired, :released or :timed_out) and the Lock, releases, and returns the
    # block's value; without one, returns the Lock.
    #
    # fenced: true gives a held lock a fencing token (Lock#fence); watchdog: true
    # renews its lease while it is held and reports a loss (Lock#lost?, #check!).
    def redlock(key, lease:, wait: nil, fenced: false, watchdog: false)
      lock = acquire(key, lease: lease, wait: wait, fenced: fenced, watchdog: watchdog)
      return lock unless block_given?

      begin
        yield lock.outcome, lock
      ensure
        lock.release unless lock.released?
      end
    end

    # Same as #redlock without a block.
    def acquire(key, lease:, wait: nil, fenced: false, watchdog: false)
      lock_out = FFI::MemoryPointer.new(:pointer)
      outcome = FFI::MemoryPointer.new(:int)
      wait_secs = wait.nil? ? WAIT_DEFAULT : Float(wait)
      flags = Aiolock.flags(fenced, watchdog)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle do |h|
          Aiolock.check(Native.aiolock_acquire_ex(h, k, kn, Float(lease), wait_secs, flags, lock_out, outcome))
        end
      end
      Lock.new(lock_out.read_pointer, OUTCOMES.fetch(outcome.read(:int)))
    end

    # Takes the exclusive lock on key (held at most lease seconds once acquired),
    # waiting through other holders' releases and lease ends until it holds it, or
    # at most wait seconds (default: one lease; 0: claim once, never wait; a negative
    # wait raises InvalidArgument). A RedLock and an exclusive lock on one key exclude
    # each other.
    #
    # With a block: yields the Exclusive, releases it after the block (also when the
    # block raises) and returns the block's value; raises NotAcquired, without
    # running the block, when the wait passed with the key held by others.
    # Without a block: returns the Exclusive, or nil when not acquired.
    #
    # fenced: true gives the lock a fencing token (Exclusive#fence); watchdog: true
    # renews its lease while it is held and reports a loss (Exclusive#lost?, #check!):
    #
    #   cache.lock("job", lease: 10.0, watchdog: true) do |guard|
    #     steps.each { |step| guard.check!; step.call } # Aiolock::Lost once lost
    #   end
    #
    # A lease lock cannot stop a holder that paused past its lease from writing after
    # the next holder started: choose a lease much longer than the work, and let the
    # storage refuse writes carrying an older fence than it has seen.
    def lock(key, lease:, wait: nil, fenced: false, watchdog: false, &block)
      wait_secs = wait.nil? ? Float(lease) : Float(wait)
      flags = Aiolock.flags(fenced, watchdog)
      lock_out = FFI::MemoryPointer.new(:pointer)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle do |h|
          Aiolock.check(Native.aiolock_exclusive_acquire_ex(h, k, kn, Float(lease), wait_secs, flags, lock_out))
        end
      end
      ptr = lock_out.read_pointer
      guard = ptr.null? ? nil : Exclusive.new(ptr)
      return guard unless block

      raise NotAcquired.new("the lock on #{key.inspect} was held by others for #{wait_secs} s") unless guard

      guard.hold(&block)
    end

    # Claims the exclusive lock on key once, never waiting: #lock with wait: 0.
    def try_lock(key, lease:, fenced: false, watchdog: false, &block)
      lock(key, lease: lease, wait: 0, fenced: fenced, watchdog: watchdog, &block)
    end

    # Begins an OptimisticLock on key. With a block, yields it and frees it after.
    def optimistic(key)
      lock_out = FFI::MemoryPointer.new(:pointer)
      Aiolock.with_bytes(key) do |k, kn|
        with_handle { |h| Aiolock.check(Native.aiolock_optimistic_begin(h, k, kn, lock_out)) }
      end
      lock = OptimisticLock.new(lock_out.read_pointer)
      return lock unless block_given?

      begin
        yield lock
      ensure
        lock.close
      end
    end

    private

    # Yields the live handle; #close waits until no call holds it.
    def with_handle
      ptr = @mutex.synchronize do
        raise Closed.new("the cache is closed") unless @ptr

        @in_flight += 1
        @ptr
      end
      begin
        yield ptr
      ensure
        @mutex.synchronize do
          @in_flight -= 1
          @idle.broadcast if @in_flight.zero?
        end
      end
    end
  end

  # What Lock and Exclusive can do while they hold the lock: #extend, #fence,
  # #lease_remaining, and for a lock taken with watchdog: true, #lost? and #check!.
  # Each class names its C functions (NATIVE). Calls on one guard are serialized, so a
  # release on another thread waits for an #extend in flight.
  module Lease
    # Renews the lease, owner-checked: if the lock is still ours, its lease now ends
    # lease seconds from now (it may shorten it); returns self. Raises Lost when the
    # lock is no longer ours or was never held (nothing changed), Closed after
    # #release. (With a Module, this is Object#extend.)
    def extend(lease, *rest)
      return super if lease.is_a?(Module)

      with_ptr { |ptr| Aiolock.check(Native.send(self.class::NATIVE[:extend], ptr, Float(lease))) }
      self
    end

    # The fencing token (an Integer) of a lock taken with fenced: true that holds the
    # lock; nil otherwise (also after #release). Send it with every write the lock
    # protects, and let the storage refuse writes with a lower fence than it has seen.
    def fence
      value = FFI::MemoryPointer.new(:uint64)
      has = FFI::MemoryPointer.new(:bool)
      @mutex.synchronize do
        return nil unless @ptr

        Aiolock.check(Native.send(self.class::NATIVE[:fence], @ptr, value, has))
      end
      has.read(:bool) ? value.read(:uint64) : nil
    end

    # Seconds (a Float) the lease lasts at least from now, on this process's
    # monotonic clock; 0.0 once it ended, when not held, or after #release.
    def lease_remaining
      secs = FFI::MemoryPointer.new(:double)
      @mutex.synchronize do
        return 0.0 unless @ptr

        Aiolock.check(Native.send(self.class::NATIVE[:remaining], @ptr, secs))
      end
      secs.read(:double)
    end

    # A lock taken with watchdog: true: whether it is lost (a renewal failed or found
    # the key gone or another caller's, or none was confirmed in time). Sends nothing.
    # Raises InvalidArgument for a lock taken without watchdog: true, Closed after
    # #release.
    def lost?
      check!
      false
    rescue Lost
      true
    end

    # Returns self while a lock taken with watchdog: true is held and renewed; raises
    # Lost (with the reason) once it is lost. Sends nothing: call it between steps of
    # the work. InvalidArgument without watchdog: true, Closed after #release.
    def check!
      with_ptr { |ptr| Aiolock.check(Native.send(self.class::NATIVE[:check], ptr)) }
      self
    end

    def released? = @ptr.nil?

    private

    def with_ptr
      @mutex.synchronize do
        raise Closed.new("the lock was already released") unless @ptr

        yield @ptr
      end
    end

    # Takes the handle for its consumer (release, free); waits for a call in flight.
    def take = @mutex.synchronize { @ptr.tap { @ptr = nil } }
  end

  # The result of Cache#acquire: holds the lock when #outcome is :acquired.
  # Release it once; a forgotten Lock is released by the garbage collector.
  class Lock
    include Lease

    RELEASE = ->(ptr) { Native.aiolock_release(ptr, nil) }
    NATIVE = {
      extend: :aiolock_lock_extend, fence: :aiolock_lock_fence,
      remaining: :aiolock_lock_lease_remaining, check: :aiolock_lock_check
    }.freeze

    attr_reader :outcome

    def initialize(ptr, outcome) # :nodoc:
      @ptr = FFI::AutoPointer.new(ptr, RELEASE)
      @outcome = outcome
      @mutex = Mutex.new
    end

    def acquired? = @outcome == :acquired

    # Releases the lock if held (owner-checked) and frees the handle; returns
    # whether it removed the lock. A second release raises Closed.
    def release
      ptr = take or raise Closed.new("the lock was already released")
      ptr.autorelease = false # consumed by aiolock_release, whatever it returns
      removed = FFI::MemoryPointer.new(:bool)
      Aiolock.check(Native.aiolock_release(ptr, removed))
      removed.read(:bool)
    end
  end

  # A held exclusive lock (Cache#lock, Cache#try_lock). Release it once; a forgotten
  # Exclusive is released by the garbage collector.
  class Exclusive
    include Lease

    NATIVE = {
      extend: :aiolock_exclusive_extend, fence: :aiolock_exclusive_fence,
      remaining: :aiolock_exclusive_lease_remaining, check: :aiolock_exclusive_check
    }.freeze

    def initialize(ptr) # :nodoc:
      @ptr = FFI::AutoPointer.new(ptr, Native.method(:aiolock_exclusive_free))
      @mutex = Mutex.new
    end

    # Releases the lock (owner-checked: a lock whose lease ended and was taken by
    # another caller is left alone) and frees the handle; returns whether it removed
    # the lock (false: the lease had already ended). A second release raises Closed.
    def release
      ptr = take or raise Closed.new("the lock was already released")
      ptr.autorelease = false # consumed by aiolock_exclusive_release, whatever it returns
      removed = FFI::MemoryPointer.new(:bool)
      Aiolock.check(Native.aiolock_exclusive_release(ptr, removed))
      removed.read(:bool)
    end

    # Yields self and releases after the block; when the block raises, releases
    # without raising another error (aiolock_exclusive_free) and re-raises. :nodoc:
    def hold
      begin
        value = yield self
      rescue Exception # rubocop:disable Lint/RescueException -- released, then re-raised
        take&.free
        raise
      end
      release unless released?
      value
    end
  end

  # A read of one key and its version; #cas writes only if the key is unchanged.
  class OptimisticLock
    attr_reader :value

    def initialize(ptr) # :nodoc:
      @mutex = Mutex.new
      @ptr = FFI::AutoPointer.new(ptr, Native.method(:aiolock_optimistic_free))
      data = FFI::MemoryPointer.new(:pointer)
      len = FFI::MemoryPointer.new(:size_t)
      found = FFI::MemoryPointer.new(:bool)
      Aiolock.check(Native.aiolock_optimistic_value(@ptr, data, len, found))
      @found = found.read(:bool)
      @value = if !@found then nil
               elsif data.read_pointer.null? then "".b
               else data.read_pointer.read_bytes(len.read(:size_t))
               end
    end

    # Whether the key was present when the lock began.
    def found? = @found

    # Writes value (expiring after ttl seconds, nil: never) if the key is unchanged;
    # else raises Conflict. The lock is used up either way.
    def cas(value, ttl: nil)
      ptr = take or raise Closed.new("the optimistic lock was already used")
      ptr.autorelease = false # consumed by aiolock_cas, whatever it returns
      Aiolock.with_bytes(value) do |v, vn|
        Aiolock.check(Native.aiolock_cas(ptr, v, vn, Aiolock.ttl_secs(ttl)))
      end
      value
    end

    # Frees the lock without writing.
    def close
      take&.free
      nil
    end

    private

    def take = @mutex.synchronize { @ptr.tap { @ptr = nil } }
  end
end
