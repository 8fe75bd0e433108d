-- wrk script for `make bench`: POST the JSON body in $BENCH_BODY to $BENCH_PATH.
-- With $BENCH_VOCAB (a file of words, one a line), every request gets a fresh query: "@QUERY@" in the
-- body becomes three random words, and x-memory-user-id a random scope bench-00..bench-99.
-- With $BENCH_KEY, every request carries "authorization: Bearer $BENCH_KEY" (the peer's master key).
-- done() prints one line "BENCH {json}" with the counts and latency percentiles in microseconds.
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH")
wrk.headers["content-type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["authorization"] = "Bearer " .. key end
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = file:read("*a")
file:close()

local vocab = os.getenv("BENCH_VOCAB")
if vocab and vocab ~= "" then
  local prefix, suffix = body:match("^(.-)@QUERY@(.*)$")
  local words = {}
  for w in io.lines(vocab) do words[#words + 1] = w end
  local n = #words
  math.randomseed(os.time())
  function request()
    local query = words[math.random(n)] .. " " .. words[math.random(n)] .. " " .. words[math.random(n)]
    local headers = {["content-type"] = "application/json",
                     ["x-memory-user-id"] = string.format("bench-%02d", math.random(0, 99))}
    return wrk.format("POST", wrk.path, headers, prefix .. query .. suffix)
  end
else
  wrk.body = body
end

local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9}

function done(summary, latency, requests)
  local curve = {}
  for i, p in ipairs(points) do curve[i] = string.format("[%g,%d]", p, latency:percentile(p)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50":%d,"p99":%d,"curve":[%s]}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), table.concat(curve, ",")))
end
