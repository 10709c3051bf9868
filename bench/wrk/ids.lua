-- Requests for random IDs from a file (one ID per line), e.g. records made by
-- bench/seed.py, so each request looks up a different record:
--   wrk -t1 -c1 -d3s -s ids.lua http://127.0.0.1:PORT -- IDS_FILE PREFIX
-- PREFIX is put before the ID: "/" for GET /ID, "/api/info?id=" for the info API.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local counter = 0

function setup(thread)
   thread:set("thread_number", counter)
   counter = counter + 1
end

function init(args)
   ids = {}
   for line in io.lines(args[1]) do
      if #line > 0 then
         ids[#ids + 1] = line
      end
   end
   if #ids == 0 then
      error("ids.lua: no IDs in " .. tostring(args[1]))
   end
   prefix = args[2] or "/"
   math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
end

function request()
   return wrk.format(nil, prefix .. ids[math.random(#ids)])
end
