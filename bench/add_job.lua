-- wrk: POST /addJob with a fresh job each time (no key: the job id is the key).
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"to":"Ada <ada@example.com>","subject":"Welcome","text":"Hello from the benchmark!"}'
