"""TLS on both ports: a coordinator with --tls-cert/--tls-key serves gRPC and HTTP (the
dashboard, /metrics) over TLS with the same certificate; the Python client connects with the
CA; plaintext is refused on the HTTP port."""
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import rmgen
from conftest import _binary


@pytest.fixture(scope="module")
def tls_coordinator(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    work = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True,
                   capture_output=True)
    token = "tls-operator-token-0123456789"
    (work / "tokens.yaml").write_text(f"tokens:\n  - {{token: {token}, user: ops, role: operator}}\n")
    log = open(work / "coordinator.log", "w")
    p = subprocess.Popen([_binary("coordinator", "rmgen-coordinator"), "--listen", "127.0.0.1:0",
                          "--http", "127.0.0.1:0", "--data-dir", str(work / "d"), "--tokens",
                          str(work / "tokens.yaml"), "--tls-cert", str(work / "cert.pem"),
                          "--tls-key", str(work / "key.pem")], stdout=log,
                         stderr=subprocess.STDOUT)
    port = http_port = None
    for _ in range(200):
        for line in (work / "coordinator.log").read_text().splitlines():
            if line.startswith("port "):
                port = int(line.split()[1])
            if line.startswith("http port "):
                http_port = int(line.split()[2])
        if port or p.poll() is not None:
            break
        time.sleep(0.05)
    assert port and http_port, (work / "coordinator.log").read_text()
    yield {"port": port, "http_port": http_port, "ca": work / "cert.pem", "token": token}
    p.terminate()
    p.wait(timeout=20)


def test_https_dashboard_and_metrics(tls_coordinator):
    t = tls_coordinator
    ctx = ssl.create_default_context(cafile=str(t["ca"]))
    base = f"https://127.0.0.1:{t['http_port']}"
    assert b"<title>rmgen</title>" in urllib.request.urlopen(base + "/", context=ctx, timeout=10).read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/metrics", context=ctx, timeout=10)
    assert e.value.code == 401
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer " + t["token"]})
    assert b"rmgen_jobs" in urllib.request.urlopen(req, context=ctx, timeout=10).read()
    # Plain HTTP on the TLS port gets no page.
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{t['http_port']}/", timeout=5).read()
    except (urllib.error.URLError, ConnectionError, OSError):
        body = b""
    assert b"<title>rmgen</title>" not in body


def test_python_client_over_tls(tls_coordinator):
    t = tls_coordinator
    with rmgen.Client(f"127.0.0.1:{t['port']}", token=t["token"],
                      root_certificates=str(t["ca"])) as c:
        assert c.studies().empty
        assert c.workers().empty
    with rmgen.Client(f"127.0.0.1:{t['port']}", token=t["token"], timeout=3) as plain:
        with pytest.raises((rmgen.Unavailable, rmgen.DeadlineExceeded)):
            plain.studies()
