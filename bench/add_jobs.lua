-- wrk: POST /addJobs with 1000 fresh jobs each time.
local job = '{"to":"Ada <ada@example.com>","subject":"Welcome","text":"Hello from the benchmark!"}'
local jobs = {}
for i = 1, 1000 do jobs[i] = job end
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jobs":[' .. table.concat(jobs, ",") .. ']}'
