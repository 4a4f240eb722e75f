-- wrk script: spreads requests over <count> paths <prefix><i><suffix>, i = 1..count, chosen
-- at random with a fixed seed (args: prefix count suffix). Reports like stats.lua.
dofile("stats.lua")

local paths = {}

function init(args)
  local prefix, count, suffix = args[1], tonumber(args[2]), args[3] or "/"
  for i = 1, count do
    paths[i] = wrk.format("GET", prefix .. i .. suffix)
  end
  math.randomseed(42)
end

function request()
  return paths[math.random(#paths)]
end
