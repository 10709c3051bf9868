-- Prints wrk's summary as one machine-readable line, for bench/load.py:
--   WRKJSON {"requests": ..., "duration_us": ..., "bytes": ..., "p50_us": ..., ...}
-- Use it alone (`wrk -s report.lua URL`) or load it from another script with
-- dofile(<this folder> .. "report.lua"), as ranges.lua and ids.lua do.

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
      '"timeouts": %d, "bad_status": %d, "mean_us": %.1f, "max_us": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.timeout, errors.status,
      latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
