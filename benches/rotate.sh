# Sourced by benches/load.sh and benches/ab.sh.
#
# A wrk script that asks for the vmRestorePoints of each ID in FILE in turn.
rotating_script() { # FILE QUERY
    cat <<LUA
local ids = {}
for line in io.lines("$1") do ids[#ids + 1] = line end
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/api/restorePoints/" .. ids[(i % #ids) + 1] .. "/vmRestorePoints$2")
end
LUA
}
