-- Random byte ranges of one file: every request asks for `length` bytes at a
-- random offset, so most ranges straddle two of imgyx's 64 KiB segments.
--   wrk -t2 -c16 -d5s -s ranges.lua http://127.0.0.1:PORT/ID -- SIZE LENGTH
-- SIZE is the file's size in bytes, LENGTH the range length (default 65536).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local counter = 0

function setup(thread)
   thread:set("thread_number", counter)
   counter = counter + 1
end

function init(args)
   size = tonumber(args[1])
   length = tonumber(args[2] or "65536")
   if size == nil or size < length then
      error("ranges.lua: give the file size (at least the range length)")
   end
   math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
end

function request()
   local first = math.random(0, size - length)
   local range = "bytes=" .. first .. "-" .. (first + length - 1)
   return wrk.format(nil, nil, { ["Range"] = range })
end
