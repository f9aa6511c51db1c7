-- wrk script for bench/receiver.py: POSTs Okta Event Hook deliveries in which every request
-- carries fresh ids, so the receiver inserts every event (no de-duplication shortcut).
--
--   wrk -t1 -c64 -d10s -s bench/okta_delivery.lua http://127.0.0.1:PORT/hooks/okta \
--       -- TEMPLATE_FILE RUN_ID SECRET
--
-- TEMPLATE_FILE holds one delivery body in which each id to make unique is written as @@ID@@
-- (the envelope's eventId first, then each event's uuid). RUN_ID is 8 hex digits, distinct
-- for every wrk invocation; ids are RUN_ID-THREAD-SLOT-8000-COUNTER, so they never repeat
-- across threads, requests or runs. When wrk stops it prints one line starting with
-- "BENCH-RESULT " followed by a JSON object that receiver.py reads.

local MARKER = "@@ID@@"

local pieces = {}
local slots = 0
local run_id = "00000000"
local thread_id = 0
local counter = 0
sent = 0 -- read by done() through thread:get

local threads = {}
local next_thread_id = 0

function setup(thread)
   thread:set("thread_id", next_thread_id)
   next_thread_id = next_thread_id + 1
   table.insert(threads, thread)
end

function init(args)
   local template_path, secret = args[1], args[3]
   run_id = args[2]
   local file = assert(io.open(template_path, "rb"))
   local template = file:read("*a")
   file:close()
   local start = 1
   while true do
      local found = string.find(template, MARKER, start, true)
      if not found then break end
      table.insert(pieces, string.sub(template, start, found - 1))
      start = found + #MARKER
   end
   table.insert(pieces, string.sub(template, start))
   slots = #pieces - 1
   thread_id = wrk.thread:get("thread_id") or 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = secret
end

function request()
   counter = counter + 1
   sent = counter
   local buffer = {}
   for slot = 1, slots do
      buffer[#buffer + 1] = pieces[slot]
      buffer[#buffer + 1] = string.format(
         "%s-%04x-%04x-8000-%012x", run_id, thread_id, slot - 1, counter)
   end
   buffer[#buffer + 1] = pieces[slots + 1]
   return wrk.format(nil, nil, nil, table.concat(buffer))
end

function done(summary, latency, requests)
   local total_sent = 0
   for _, thread in ipairs(threads) do
      total_sent = total_sent + (thread:get("sent") or 0)
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH-RESULT {"duration_us": %d, "requests": %d, "bytes": %d, "sent": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
      summary.duration, summary.requests, summary.bytes, total_sent,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
