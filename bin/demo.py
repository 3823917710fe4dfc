"""The bin/up demonstration: one agent and one operator talking to the control plane
over its real HTTP API (standard library only)."""
import hashlib
import json
import sys
import urllib.request

url, api_key, token = sys.argv[1:4]


def call(method, path, body=None, bearer=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if bearer:
        req.add_header("Authorization", "Bearer " + bearer)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def services_hash(services):
    # The same FNV-1a the wire contract defines (proto/src/lib.rs).
    lines = sorted("\x1f".join([s["workload_key"], str(s["pid"]), s["exe"], s["runtime"],
                                ",".join(sorted(s["llm_providers"])),
                                str(s["instrumented"]).lower(), str(s["python_sdk"]).lower()])
                   for s in services)
    h = 0xcbf29ce484222325
    for b in "\x1e".join(lines).encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


status, enrolled = call("POST", "/v1/enroll", {"token": token, "hostname": "demo-host", "agent_version": "demo"})
assert status == 201, enrolled
agent_id, cred = enrolled["agent_id"], enrolled["credential"]
print(f"agent enrolled: {agent_id}")
services = [{"workload_key": "host:/usr/bin/python3", "pid": 4242, "exe": "/usr/bin/python3",
             "runtime": "python", "llm_providers": ["openai"], "instrumented": False, "python_sdk": False}]
seq = 0


def poll(results=()):
    global seq
    seq += 1
    status, body = call("POST", "/v1/poll", {"protocol": 1, "agent_id": agent_id, "seq": seq,
                                             "services_hash": services_hash(services), "services": services,
                                             "heartbeat": {"agent_version": "demo"}, "results": list(results)},
                        bearer=cred)
    assert status == 200, body
    return body


print(f"first poll: {len(poll()['actions'])} actions")
status, applied = call("POST", "/v1/apply", {"workloads": [
    {"workload_key": "host:/usr/bin/python3", "instrumentation": "instrumented"}]}, bearer=api_key)
assert status == 200, applied
print(f"operator applied desired state: revision {applied['revision']}, changed {applied['changed']}")
actions = poll()["actions"]
assert len(actions) == 1, actions
a = actions[0]
print(f"agent received action: {a['kind']} {a['target']} (id {a['id']})")
poll([{"action_id": a["id"], "idempotency_key": a["idempotency_key"], "phase": "final",
       "status": "refused", "message": "demo agent: instrumentation arrives with the eBPF issue"}])
status, listed = call("GET", "/v1/actions", bearer=api_key)
print(f"operator sees the action as: {listed['actions'][0]['state']}")
status, agents = call("GET", "/v1/agents", bearer=api_key)
print(f"operator sees agent {agents['agents'][0]['agent_id']} as {agents['agents'][0]['liveness']}")
