# frozen_string_literal: true

module Aiolock
  # The gem's version: the C library's it was written for (aiolock-ffi's, in
  # ffi/Cargo.toml). Aiolock.version is the loaded library's own.
  VERSION = "0.1.0"
end
