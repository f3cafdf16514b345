"""The coordinator's HTTP routes under malformed and hostile requests (seeded): garbage,
broken request lines and headers, oversized headers and bodies, odd methods, encoded and
traversing paths, bad parameters, bogus tokens. The coordinator must answer or close, never
crash, never hand out data without a valid token; afterwards it still serves HTTP and gRPC."""
import random
import socket
import urllib.parse

from test_metrics import get

ROUTES = ["/", "/index.html", "/healthz", "/metrics", "/api/whoami", "/api/studies",
          "/api/studies/s1", "/api/studies/s1/results", "/api/jobs/x", "/api/jobs/x/events",
          "/api/jobs/x/cancel", "/api/studies/s1/cancel", "/api/workers",
          "/api/workers/py-worker/drain"]


def raw(port, data, timeout=3.0):
    """Sends bytes, returns what came back (maybe nothing: the server may close)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not c:
                break
            chunks.append(c)
        return b"".join(chunks)
    except (BrokenPipeError, ConnectionResetError):
        return b""
    finally:
        s.close()


def cases(rng, token):
    junk = lambda n: bytes(rng.getrandbits(8) for _ in range(n))
    route = lambda: rng.choice(ROUTES)
    auth = lambda: rng.choice([b"", b"Authorization: Bearer \r\n", b"Authorization: Basic Zm9vOmJhcg==\r\n",
                               b"Authorization: Bearer " + junk(40).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n",
                               b"Authorization: Bearer \xff\xfe\xfd\r\n",
                               ("Authorization: Bearer " + token + "\r\n").encode()])
    for _ in range(60):
        yield junk(rng.randint(1, 2000))
    for _ in range(40):
        yield rng.choice([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"BREW",
                          b"G\x00ET"]) + b" " + route().encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth() + b"\r\n"
    for _ in range(40):  # paths: traversal, encodings, long ids, nul bytes, queries
        p = rng.choice(["/api/studies/" + "../" * rng.randint(1, 6) + "etc/passwd",
                        "/api/jobs/%00%ff%2e%2e%2f/events", "/api/jobs/" + "a" * 5000,
                        "/api/jobs/x/events?after=-5&limit=abc", "/api/jobs/x/events?after=99999999999999999999999",
                        "/api/studies?all=1&all=0&" + "k=v&" * 500, "/%", "/%zz", "//api//studies",
                        "/api/studies/s1%0d%0aX-Injected:1", "/metrics?" + "x" * 7000,
                        "/api/jobs/" + urllib.parse.quote("é\u2028<script>") + "/events"])
        yield b"GET " + p.encode("utf-8", "surrogatepass") + b" HTTP/1.1\r\nHost: x\r\n" + auth() + b"\r\n"
    for _ in range(20):  # headers: huge, many, folded, broken
        yield (b"GET /api/studies HTTP/1.1\r\n" + b"X-A: " + b"a" * rng.randint(8000, 70000) + b"\r\n" + auth() + b"\r\n")
        yield b"GET /api/whoami HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(rng.randint(100, 2000))) + b"\r\n"
        yield b"GET /api/whoami HTTP/1.1\r\nHost x\r\n no-colon-folded\r\n\r\n"
        yield b"GET /api/whoami HTTP/9.9\r\n\r\n"
    for _ in range(20):  # bodies: lies about their length, huge, chunked garbage
        yield b"POST /api/workers/py-worker/drain HTTP/1.1\r\nContent-Length: 999999999\r\n" + auth() + b"\r\nabc"
        yield b"POST /api/jobs/x/cancel HTTP/1.1\r\nContent-Length: -1\r\n" + auth() + b"\r\n"
        yield b"POST /api/jobs/x/cancel HTTP/1.1\r\nTransfer-Encoding: chunked\r\n" + auth() + b"\r\nzz\r\n" + junk(50)
        yield b"POST /api/studies/s1/cancel HTTP/1.1\r\nContent-Length: 200000\r\n" + auth() + b"\r\n" + b"{" * 200000


def test_malformed_requests_never_crash_or_leak(cluster, finished):
    rng = random.Random(20261201)
    coordinator = cluster.procs[0]
    n = 0
    for data in cases(rng, "bogus-token-" + "0" * 20):
        reply = raw(cluster.http_port, data)
        n += 1
        # Whatever came back, none of it is data: no study, job or metric without a token.
        assert b"rmgen_jobs" not in reply and b"\"studies\"" not in reply and b"pyclient" not in reply, reply[:300]
        if n % 25 == 0:
            assert coordinator.poll() is None, f"the coordinator died after {n} requests"
            assert get(cluster.http + "/healthz")[0] == 200
    assert n >= 260
    assert coordinator.poll() is None
    assert get(cluster.http + "/api/whoami", cluster.tokens["submitter"])[0] == 200
    import rmgen

    with rmgen.Client(cluster.address, token=cluster.tokens["submitter"]) as c:
        assert finished[0].id in set(c.studies()["id"])


def test_api_errors_are_json_with_the_right_status(cluster, finished):
    t = cluster.tokens["submitter"]
    assert get(cluster.http + "/api/studies/s999999", t)[0] == 404
    code, _, body = get(cluster.http + "/api/studies", "")
    assert code == 401 and "error" in body
    # Another user's study reads as missing, not as data.
    code, _, body = get(cluster.http + f"/api/studies/{finished[0].id}", cluster.tokens["other"])
    assert code in (403, 404) and "pyclient" not in body
    code, _, body = get(cluster.http + "/api/jobs/x/events?after=abc&limit=-4", t)
    assert code == 404, body


def test_dashboard_actions_are_for_operators(cluster, alice, study_file):
    """Cancel from the dashboard's API: a submitter is refused (403) even on their own study,
    an operator may; a cross-origin POST is refused whoever sends it."""
    import urllib.request

    text = study_file.read_text().replace("name: pyclient", "name: pycancel-http").replace(
        "seeds: [0, 1]", "seeds: [11]").replace("1.0e-3", "3.0e-3")
    s = alice.submit_study(text)

    def post(path, token, origin=None):
        headers = {"Authorization": f"Bearer {token}"}
        if origin:
            headers["Origin"] = origin
        req = urllib.request.Request(cluster.http + path, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post(f"/api/studies/{s.id}/cancel", cluster.tokens["submitter"]) == 403
    assert post(f"/api/studies/{s.id}/cancel", cluster.tokens["operator"],
                origin="http://evil.example") == 403
    assert not alice.study(s.id).cancelled
    assert post(f"/api/studies/{s.id}/cancel", cluster.tokens["operator"],
                origin=cluster.http) == 200
    assert alice.study(s.id).cancelled
