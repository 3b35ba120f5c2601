"""docker/ as shipped, checked without a docker engine: the compose file's services, ports, volumes
and provisioning paths; the Grafana provisioning and dashboard; the Dockerfile's promises (CPU by
default, CUDA by argument, non-root, gRPC health check, no dataset in the build context)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import PurePosixPath

import pytest

from monitoring_support import (COMPOSE, DASHBOARD, DASHBOARD_PROVIDERS_DIR, DASHBOARDS_DIR, DATASOURCES_DIR,
                                DOCKER, GRAFANA, NOT_ON_DASHBOARD, PROMETHEUS_CONFIG, ROOT, dashboard_metrics,
                                dashboard_panels, dashboard_targets, load_yaml)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def interpolate(value):
    """Compose's variable substitution with nothing set in the environment: `${X:-default}` →
    default, `${X}` → '', `$$` → `$`."""
    if not isinstance(value, str):
        return value
    value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value.replace("$$", "\0"))
    return value.replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env(service: dict) -> dict:
    e = service.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) if "=" in item else (item, None) for item in e)
    return {k: interpolate(v) for k, v in e.items()}


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume entry, sources interpolated."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out.append((interpolate(entry["source"]), entry["target"], "ro" if entry.get("read_only") else "rw"))
        else:
            parts = interpolate(entry).split(":")
            out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def bind_source(source: str):
    return (DOCKER / source).resolve() if source.startswith((".", "/")) else None


def published(service: dict) -> list[tuple[str, int, int]]:
    out = []
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = str(entry).split(":")
        out.append((host_ip, int(host_port), int(container_port.split("/")[0])))
    return out


def datasource() -> dict:
    sources = [s for f in DATASOURCES_DIR.glob("*.yml") for s in load_yaml(f)["datasources"]]
    assert len(sources) == 1, sources
    return sources[0]


def dashboard_provider() -> dict:
    providers = [p for f in DASHBOARD_PROVIDERS_DIR.glob("*.yml") for p in load_yaml(f)["providers"]]
    assert len(providers) == 1, providers
    return providers[0]


def mount_of(service: dict, target: str) -> tuple[str, str, str]:
    for m in mounts(service):
        if m[1] == target:
            return m
    raise AssertionError(f"nothing mounted at {target}: {mounts(service)}")


def container_path_in_mount(service: dict, path: str):
    """The host file behind a path inside the container, through the service's bind mounts."""
    p = PurePosixPath(path)
    for source, target, _ in mounts(service):
        if p == PurePosixPath(target) or PurePosixPath(target) in p.parents:
            host = bind_source(source)
            assert host is not None, f"{path} is in the named volume {source}, not a shipped file"
            return host / p.relative_to(target)
    raise AssertionError(f"{path} is not inside any mount of the service")


# -- compose ------------------------------------------------------------------------------------------

def test_compose_has_the_four_services_and_both_volumes(compose, services):
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"server", "replay", "prometheus", "grafana"}
    assert {"checkpoints", "prometheus-data"} <= set(compose["volumes"])


def test_the_broker_profile_runs_redis_a_producer_and_the_consumer_into_the_server(compose, services):
    """docs/broker.md: `--profile broker` adds Redis, a producer job and a consumer; their commands are
    what the real CLI parses, and both name the same Redis, stream and (for the consumer) the server."""
    from client.cli import build_parser

    broker = {name for name, s in services.items() if "broker" in s.get("profiles", [])}
    assert broker == {"redis", "producer", "consumer"} and "redis-data" in compose["volumes"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "--appendonly" in services["redis"]["command"]

    def argv(name: str) -> list[str]:
        script = services[name]["entrypoint"][-1].replace("$$", "$")
        e = env(services[name])
        for key, value in e.items():
            script = script.replace(f'"${key}"', value or "").replace(f"${key}", value or "")
        words = script.split()
        assert words[:2] == ["exec", "clstream-client"]
        return words[2:]

    produce, consume = build_parser().parse_args(argv("producer")), build_parser().parse_args(argv("consumer"))
    assert produce.command == "publish" and consume.command == "consume"
    assert produce.redis == consume.redis == "redis://redis:6379/0" and produce.stream == consume.stream
    assert consume.target == f"server:{env(services['server'])['CLSTREAM_PORT']}"
    assert produce.dataset == env(services["replay"])["REPLAY_DATASET"]
    assert services["consumer"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["consumer"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["consumer"]["restart"] == "on-failure" and services["producer"]["restart"] == "no"
    assert "CLSTREAM_TOKEN" in env(services["consumer"])


def test_every_published_port_binds_loopback_only(services):
    for name, service in services.items():
        for host_ip, _, _ in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
    assert {p[2] for p in published(services["grafana"])} == {3000}
    assert 9090 in {p[2] for p in published(services["prometheus"])}


def test_server_ports_and_checkpoint_volume_agree_with_its_settings(services):
    server = services["server"]
    e = env(server)
    assert {p[2] for p in published(server)} == {int(e["CLSTREAM_PORT"]), int(e["CLSTREAM_METRICS_PORT"])}
    assert e["CLSTREAM_HOST"] == e["CLSTREAM_METRICS_HOST"] == "0.0.0.0"  # reachable in the compose network
    source, target, _ = mount_of(server, e["CLSTREAM_CHECKPOINT_DIR"])
    assert source == "checkpoints" and target == "/var/lib/clstream/checkpoints"
    assert server["stop_grace_period"]  # time for the final checkpoint on SIGTERM


def test_the_image_is_built_from_the_shipped_dockerfile(services):
    for name in ("server", "replay"):
        build = services[name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        assert interpolate(build["args"]["TORCH_INDEX_URL"]) == "https://download.pytorch.org/whl/cpu"
    assert services["server"]["image"] == services["replay"]["image"]


def test_server_environment_names_real_settings(services, monkeypatch):
    settings = pytest.importorskip("server.settings", reason="server/ is not in this checkout yet")
    e = env(services["server"])
    unknown = {k for k in e if k.startswith("CLSTREAM_")} - {
        "CLSTREAM_" + f.upper() for f in settings.ServerSettings.model_fields}
    assert not unknown, f"the compose file sets variables the server does not read: {unknown}"
    for key in list(__import__("os").environ):
        if key.startswith("CLSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in e.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    s = settings.load_settings([])  # the values the compose file sets are valid settings
    assert s.port == 50051 and s.metrics_port == 9464 and str(s.checkpoint_dir) == "/var/lib/clstream/checkpoints"


def test_replay_job_streams_into_the_server(services):
    replay = services["replay"]
    command = " ".join(replay["entrypoint"])
    port = env(services["server"])["CLSTREAM_PORT"]
    assert f"clstream-client stream --target server:{port} --dataset" in command
    assert replay["depends_on"]["server"]["condition"] == "service_healthy"
    assert replay["restart"] == "no"
    source, target, mode = mount_of(replay, "/data")
    assert mode == "ro" and bind_source(source).is_dir()  # the default mount point ships (empty)
    from cl_engine.streams import BUILDERS

    default = env(replay)["REPLAY_DATASET"]
    assert default in BUILDERS and ":" not in default  # embedded: streams with nothing mounted


def test_an_auth_enabled_stack_lets_the_replay_job_in(services, monkeypatch, tmp_path):
    """The replay job passes CLSTREAM_TOKEN through, and `clstream-client stream` sends it: a server
    started from the compose environment with CLSTREAM_AUTH_TOKENS accepts the replay job's
    connection with that token, and refuses it (UNAUTHENTICATED) when the token is left unset."""
    replay, server = env(services["replay"]), env(services["server"])
    assert "CLSTREAM_TOKEN" in replay and replay["CLSTREAM_TOKEN"] is None  # from the shell, else unset
    assert "CLSTREAM_AUTH_TOKENS" in server and server["CLSTREAM_AUTH_TOKENS"] is None
    settings = pytest.importorskip("server.settings", reason="server/ is not in this checkout yet")
    cli = pytest.importorskip("client.cli", reason="client/ is not in this checkout yet")
    from client.api import ServiceError
    from server.service import Service

    os = __import__("os")
    for key in list(os.environ):
        if key.startswith("CLSTREAM_"):
            monkeypatch.delenv(key)
    shell = {"CLSTREAM_AUTH_TOKENS": '["s3cret"]', "CLSTREAM_TOKEN": "s3cret"}  # as the compose header says

    def container(environment: dict) -> None:
        for key in list(os.environ):
            if key.startswith("CLSTREAM_"):
                monkeypatch.delenv(key)
        for key, value in environment.items():
            value = shell.get(key) if value is None else value  # a pass-through takes the shell's value
            if value is not None:
                monkeypatch.setenv(key, value)

    container(server)
    service = Service(settings.load_settings([], host="127.0.0.1", port=0, metrics_host="127.0.0.1",
                                             metrics_port=0, checkpoint_dir=tmp_path, device="cpu")).start()
    try:
        def replay_job_status():
            args = cli.build_parser().parse_args(["stream", "--target", f"127.0.0.1:{service.port}", "--dataset",
                                                  replay["REPLAY_DATASET"], "--retries", "1"])
            with cli.connect(args) as client:
                return client.status()

        container(replay)
        assert replay_job_status().has_model is False  # in, on an empty server
        shell.pop("CLSTREAM_TOKEN")
        container(replay)
        with pytest.raises(ServiceError) as e:
            replay_job_status()
        assert e.value.code.name == "UNAUTHENTICATED"
    finally:
        service.stop(grace=0.5)


def test_replay_uses_the_client_cli_as_built():
    scripts = PYPROJECT["project"].get("scripts", {})
    if "clstream-client" not in scripts:
        pytest.skip("clstream-client is not in this checkout yet (client branch): the replay job's command "
                    "line is checked once it is")
    module, func = scripts["clstream-client"].split(":")
    done = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {func} as m; "
                           "sys.argv = ['clstream-client', 'stream', '--help']; m()"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"})
    assert "--target" in done.stdout and "--dataset" in done.stdout, done.stdout + done.stderr


def test_prometheus_gets_the_shipped_config_and_a_data_volume(services):
    prom = services["prometheus"]
    args = dict(a.lstrip("-").split("=", 1) for a in prom["command"])
    config = container_path_in_mount(prom, args["config.file"])
    assert config.resolve() == PROMETHEUS_CONFIG.resolve()
    source, _, _ = mount_of(prom, args["storage.tsdb.path"])
    assert source == "prometheus-data"
    scrape = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in scrape}
    assert targets["clstream"] == [f"server:{env(services['server'])['CLSTREAM_METRICS_PORT']}"]
    replicas = sorted(name for name, s in services.items() if "replicas" in s.get("profiles", []))
    assert targets["clstream-replicas"] == [f"{name}:{env(services[name])['CLSTREAM_METRICS_PORT']}"
                                            for name in replicas] and replicas
    assert set(targets) == {"clstream", "clstream-replicas"}


def test_the_replicas_profile_follows_the_server(services):
    """docs/replicas.md: `--profile replicas` adds two replicas that follow the server's gRPC port, on
    loopback host ports of their own, with settings the server accepts."""
    from server.settings import settings_from

    replicas = {name: s for name, s in services.items() if "replicas" in s.get("profiles", [])}
    assert sorted(replicas) == ["replica1", "replica2"]
    ports = set()
    for name, replica in replicas.items():
        e = env(replica)
        assert e["CLSTREAM_FOLLOW"] == f"server:{env(services['server'])['CLSTREAM_PORT']}"
        ports |= {p[1] for p in published(replica)}
        settings = settings_from(None, **{k[len("CLSTREAM_"):].lower(): v for k, v in e.items() if v})
        assert settings.follow and settings.checkpoint_dir is None
    assert len(ports) == 2 and not ports & {p[1] for p in published(services["server"])}


def test_grafana_provisioning_is_mounted_and_points_at_the_dashboard(services):
    grafana = services["grafana"]
    assert container_path_in_mount(grafana, "/etc/grafana/provisioning").resolve() == (GRAFANA / "provisioning")
    provider = dashboard_provider()
    assert provider["type"] == "file"
    dashboards = container_path_in_mount(grafana, provider["options"]["path"])
    assert dashboards.resolve() == DASHBOARDS_DIR and DASHBOARD.parent == DASHBOARDS_DIR
    home = container_path_in_mount(grafana, env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.resolve() == DASHBOARD  # the home page, provisioned from the same file: no clicks
    ds = datasource()
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()
    assert host in services
    assert ds["type"] == "prometheus" and ds["uid"] and ds["access"] == "proxy"
    listen = dict(a.lstrip("-").split("=", 1) for a in services["prometheus"]["command"])["web.listen-address"]
    assert listen.rsplit(":", 1)[1] == port


# -- dashboard ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_panel_queries_the_provisioned_datasource(dashboard):
    uid = datasource()["uid"]
    ids = set()
    for panel in dashboard_panels(dashboard):
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] == "row":
            assert not panel.get("targets"), "a row holds panels, not queries"
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query: it would show nothing"
        assert panel["datasource"]["uid"] == uid, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} does not say what it means"


def test_panels_fit_the_grid_without_overlapping(dashboard):
    cells = {}
    for panel in dashboard_panels(dashboard):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_panels_the_issue_lists_are_there(dashboard):
    exprs = [t["expr"] for _, t in dashboard_targets(dashboard)]

    def has(*needles):
        return any(all(n in e for n in needles) for e in exprs)

    assert has("clstream_prequential_accuracy_ratio")
    assert has('clstream_learning_metric_ratio{family="gem", metric="acc"}')       # held-out, at bucket ends
    served = [(p, t) for p, t in dashboard_targets(dashboard) if "clstream_served_samples_total" in t["expr"]]
    assert [p["title"] for p, _ in served] == ["Prequential and served accuracy"]  # served accuracy is the
    assert all(n in served[0][1]["expr"] for n in ('outcome="correct"', "rate(", "/"))  # ratio of rates
    matrix = [p for p, t in dashboard_targets(dashboard) if "clstream_accuracy_matrix_ratio" in t["expr"]]
    assert matrix and matrix[0]["type"] in ("table", "heatmap")
    assert has("clstream_forgetting_ratio")
    assert has('family="gem"') and has('family="clear"')
    assert has("clstream_buffer_bucket_samples") and has("clstream_buffer_class_samples")
    assert has("rate(clstream_samples_trained_total")
    assert has("histogram_quantile", "clstream_train_step_seconds_bucket")
    assert has("histogram_quantile", "clstream_predict_seconds_bucket")
    assert has("clstream_queue_depth") and has("clstream_train_streams_open")
    assert has("clstream_gem_projections_total") and has("clstream_gem_qp_fallbacks_total")
    assert has("clstream_drift_events_total")
    assert has("clstream_current_bucket") and has("clstream_model_version")
    budgets = [p for p, t in dashboard_targets(dashboard) if "clstream_calls_open" in t["expr"]]
    assert budgets and any("clstream_calls_limit" in t["expr"] for t in budgets[0]["targets"])  # open vs limit
    assert has("sum by (instance, budget)", "clstream_calls_refused_total")  # budgets are per server and replica


def test_the_metrics_without_a_panel_are_the_ones_docs_list():
    """docs/monitoring.md's "Not on the dashboard" table names exactly the metrics the tests let go without a
    panel (tests/monitoring/test_monitoring_prometheus.py checks every other exported metric has one), and
    none of them is on the dashboard after all."""
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    table = doc[doc.index("Not on the dashboard:"):doc.index("## Alerts")]
    assert set(re.findall(r"^\| `(clstream_\w+)` \|", table, re.MULTILINE)) == set(NOT_ON_DASHBOARD)
    assert not set(NOT_ON_DASHBOARD) & dashboard_metrics(json.loads(DASHBOARD.read_text()))
    assert all(reason for reason in NOT_ON_DASHBOARD.values())


def test_dashboard_identity(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("templating", {}).get("list", []) == []  # nothing to pick: no clicks


# -- Dockerfile ---------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_cpu_by_default_cuda_by_argument():
    ins = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in ins if w == "ARG" and "=" in rest}
    assert args["BASE_IMAGE"].startswith("python:")                       # CPU base
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # CPU wheels, overridable
    froms = [rest for w, rest in ins if w == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms)
    assert any(w == "RUN" and '--index-url "${TORCH_INDEX_URL}"' in rest and "torch" in rest for w, rest in ins)


def test_dockerfile_runs_as_non_root_with_a_grpc_health_check():
    ins = dockerfile_instructions()
    users = [rest for w, rest in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    health = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "healthcheck.py" in health[0]
    assert any(w == "COPY" and rest.startswith("docker/healthcheck.py ") for w, rest in ins)
    assert "grpc_health.v1" in (DOCKER / "healthcheck.py").read_text()
    entry = [rest for w, rest in ins if w == "ENTRYPOINT"]
    assert entry == ['["clstream-server"]'] and "clstream-server" in PYPROJECT["project"]["scripts"]


def test_build_context_is_an_allow_list_without_data():
    patterns = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # everything out, then only what the install needs back in
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in ("cl_engine", "server", "proto"):
        assert package in allowed
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], "docker/healthcheck.py"} <= allowed
    assert not {"data", "docker/data", "out", "reports", "benchmarks", "tests", ".venv"} & allowed
    assert "clstream_proto*" in include  # generated code, from proto/
    for data in ("**/*.npz", "**/*.pt", "**/*.jpg"):
        assert data in patterns


def test_healthcheck_reports_an_unreachable_server_as_unhealthy():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "CLSTREAM_HEALTHCHECK_TIMEOUT": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "UNAVAILABLE" in done.stdout or "DEADLINE_EXCEEDED" in done.stdout


def test_the_stack_files_point_at_the_readme_that_exists():
    """docker/README.md was folded into docs/monitoring.md: no pointer to it is left."""
    assert not (DOCKER / "README.md").exists() and "# Monitoring" in (ROOT / "docs" / "monitoring.md").read_text()
    stale = [str(p.relative_to(ROOT)) for p in DOCKER.rglob("*") if p.is_file() and p.suffix not in (".npz", ".pt")
             and "docker/README.md" in p.read_text(errors="replace")]
    assert not stale, stale
