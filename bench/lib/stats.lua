-- wrk script: prints one JSON line with the run's totals and latency percentiles (µs).
-- (wrk runs with bench/lib as its working directory, so paths.lua can dofile this.)

function done(summary, latency, requests)
  local ps = {}
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.99}) do
    ps[#ps + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"durationUs":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"meanUs":%.1f,"maxUs":%d,"latencyUs":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency.mean, latency.max, table.concat(ps, ",")))
end
