"""cluster.connect: the kinds registry, GPU workers, job scripts, Kubernetes manifests, TLS, redaction."""
from __future__ import annotations

import datetime
import ipaddress
import logging
import re
from urllib.parse import urlparse

import pytest

from fmri2img.storage import secrets
from fmri2img.cluster import (
    GPU,
    ClusterError,
    check_options,
    connect,
    job_script,
    kubernetes_spec,
    make_security,
    section_options,
)
from fmri2img.cluster.jobqueue import JobQueueError
from fmri2img.cluster.kubernetes import KubernetesError
from fmri2img.cluster.security import SecurityError
from fmri2img.pipeline.tasks import Task, run_tasks


def _close(client) -> None:
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


# -- the registry ----------------------------------------------------------------------------

def test_unknown_spec_names_the_kinds():
    with pytest.raises(ClusterError, match=r"unknown cluster spec 'yarn'.*'kubernetes'.*'local'.*'slurm'"):
        connect("yarn")


@pytest.mark.parametrize("spec, option", [("local", "queue"), ("tcp://127.0.0.1:1", "n_workers"),
                                          ("slurm", "image"), ("kubernetes", "walltime"), ("pbs", "gpu_workers")])
def test_each_kind_refuses_options_it_does_not_take(spec, option):
    with pytest.raises(ClusterError, match=rf"does not take option\(s\) \['{option}'\]; valid options are"):
        connect(spec, **{option: 1})


def test_section_options_pass_flat_keys_the_kind_takes_and_check_the_options_table():
    section = {"spec": "slurm", "n_workers": 0, "threads_per_worker": 1, "memory_limit": "auto",
               "dashboard_address": "127.0.0.1:8787", "processes": True,
               "options": {"cores": 8, "memory": "32GB", "minimum": 0, "maximum": 4}}
    spec, options = section_options(section)
    assert spec == "slurm"
    assert options == {"dashboard_address": "127.0.0.1:8787", "cores": 8, "memory": "32GB",
                       "minimum": 0, "maximum": 4}
    spec, options = section_options({"spec": "local", "n_workers": 2, "processes": False})
    assert options == {"n_workers": 2, "processes": False}
    with pytest.raises(ClusterError, match=r"'kubernetes' does not take option\(s\) \['walltime'\]"):
        section_options({"spec": "kubernetes", "options": {"walltime": "1:00:00"}})


# -- local clusters --------------------------------------------------------------------------

def test_local_cluster_binds_scheduler_and_dashboard_to_loopback():
    client = connect("local", n_workers=1, dashboard_address="127.0.0.1:0")
    try:
        assert urlparse(client.scheduler.address).hostname == "127.0.0.1"
        assert urlparse(client.dashboard_link).hostname == "127.0.0.1"
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and all(urlparse(a).hostname == "127.0.0.1" for a in workers)
    finally:
        _close(client)


def test_gpu_stages_land_only_on_gpu_workers():
    client = connect("local", n_workers=1, gpu_workers=1, processes=False, dashboard_address="127.0.0.1:0")
    try:
        resources = {w["name"]: w["resources"] for w in client.scheduler_info()["workers"].values()}
        assert resources == {0: {}, "gpu-0": {GPU: 1}}

        def where(_):
            from distributed import get_worker

            return get_worker().name

        tasks = [Task(f"block-{i}", where, (i,)) for i in range(8)]
        on_gpu = run_tasks(tasks, stage="gpu-stage", client=client, progress=False, resources={GPU: 1})
        assert set(on_gpu) == {"gpu-0"}
        anywhere = client.gather([client.submit(where, i, pure=False) for i in range(40)])
        assert set(anywhere) <= {0, "gpu-0"}
    finally:
        _close(client)


def test_gpu_workers_is_checked():
    with pytest.raises(ClusterError, match="gpu_workers: expected a number ≥ 0 or 'auto'"):
        connect("local", gpu_workers=-1, processes=False)


def test_stage_tasks_carry_the_stage_prefix_and_span():
    client = connect("local", n_workers=1, processes=False, dashboard_address="127.0.0.1:0")
    try:
        run_tasks([Task(f"r-{i}", abs, (-i,)) for i in range(3)], stage="ingest-subj01", client=client,
                  progress=False)

        def spans(dask_scheduler):
            ext = dask_scheduler.extensions["spans"]
            return sorted(s.name for s in ext.spans.values())

        def keys(dask_scheduler):
            return list(dask_scheduler.task_prefixes)

        assert ("ingest-subj01",) in client.run_on_scheduler(spans)
        assert "ingest" in client.run_on_scheduler(keys)  # the dashboard groups tasks by this prefix
    finally:
        _close(client)


# -- job queues ------------------------------------------------------------------------------

def test_slurm_job_script_has_the_directives_and_gpu_resource():
    script = job_script("slurm", scheduler="tcp://10.1.2.3:8786", cores=8, memory="32GB", walltime="04:00:00",
                        partition="gpu", account="lab-nsd", gpus=1, local_directory="/scratch/$USER",
                        job_extra_directives=["--constraint=a100"])
    lines = script.splitlines()
    for directive in ["#SBATCH -p gpu", "#SBATCH -A lab-nsd", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00",
                      "#SBATCH --constraint=a100", "#SBATCH --gres=gpu:1", "#SBATCH -J fmri2img"]:
        assert directive in lines, directive
    assert any(re.fullmatch(r"#SBATCH --mem=\d+G", x) for x in lines)
    command = lines[-1]
    assert "distributed.cli.dask_worker tcp://10.1.2.3:8786" in command
    assert "--nthreads 8" in command and "--resources GPU=1" in command
    assert "--local-directory /scratch/$USER" in command


def test_cpu_job_script_does_not_advertise_gpus():
    script = job_script("slurm", cores=2, memory="8GB")
    assert "GPU=" not in script and "--gres" not in script


def test_pbs_job_script():
    script = job_script("pbs", cores=4, memory="16GB", queue="workq", account="proj", walltime="02:00:00",
                        gpus=2, job_extra_directives=["-l select=1:ngpus=2"])
    lines = script.splitlines()
    for directive in ["#PBS -q workq", "#PBS -A proj", "#PBS -l walltime=02:00:00", "#PBS -l select=1:ngpus=2"]:
        assert directive in lines, directive
    assert any(x.startswith("#PBS -l select=1:ncpus=4:mem=") for x in lines)
    assert "--resources GPU=2" in lines[-1]


@pytest.mark.parametrize("options, message", [
    ({"cores": 2, "minimum": 1}, "give both"),
    ({"minimum": 3, "maximum": 1}, "0 ≤ minimum ≤ maximum"),
    ({"gpus": "one"}, "gpus: expected a number of GPUs"),
    ({"cpus": 4}, r"unknown option\(s\) \['cpus'\]"),
])
def test_job_options_are_checked(options, message):
    with pytest.raises(JobQueueError, match=message):
        job_script("slurm", **options)


def test_slurm_cluster_starts_adaptive_on_loopback_and_logs_no_secret(caplog):
    """The real SLURMCluster, with adaptive scaling from zero jobs (so nothing is submitted)."""
    caplog.set_level(logging.DEBUG, logger="fmri2img")
    client = connect("slurm", cores=2, memory="4GB", minimum=0, maximum=3, dashboard_address="127.0.0.1:0",
                     job_script_prologue=["export AWS_SECRET_ACCESS_KEY=s3cr3t-value"])
    try:
        cluster = client.cluster
        assert type(cluster).__name__ == "SLURMCluster"
        assert cluster._adaptive is not None
        assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (0, 3)
        # the scheduler listens where batch jobs can reach it; its dashboard only on loopback (ssh -L to view)
        bound = [sock.getsockname()[0] for sock in cluster.scheduler.http_server._sockets.values()]
        assert bound == ["127.0.0.1"]
        assert "s3cr3t-value" in cluster.job_script()  # the job needs it ...
        assert "s3cr3t-value" not in caplog.text  # ... the logs never show it
        assert "AWS_SECRET_ACCESS_KEY=***" in caplog.text
    finally:
        _close(client)


# -- Kubernetes ------------------------------------------------------------------------------

def test_kubernetes_spec_for_gpu_workers():
    spec = kubernetes_spec(name="nsd", image="ghcr.io/lab/fmri2img:0.1", namespace="lab", n_workers=4, cpu="4",
                           memory="16Gi", gpus=1, threads_per_worker=2, env={"AWS_PROFILE": "lab"})
    assert spec["kind"] == "DaskCluster" and spec["metadata"] == {"name": "nsd", "namespace": "lab"}
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 4
    container = worker["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/lab/fmri2img:0.1"
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    args = container["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "2"
    assert {"name": "AWS_PROFILE", "value": "lab"} in container["env"]
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in scheduler["resources"]["limits"]


def test_kubernetes_spec_cpu_only_and_errors():
    container = kubernetes_spec()["spec"]["worker"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "--resources" not in container["args"]
    with pytest.raises(KubernetesError, match=r"unknown option\(s\) \['replicas'\]"):
        kubernetes_spec(replicas=3)
    with pytest.raises(KubernetesError, match="n_workers: expected a non-negative integer"):
        kubernetes_spec(n_workers=-1)
    with pytest.raises(KubernetesError, match="give both"):
        kubernetes_spec(maximum=3)


# -- TLS and redaction -----------------------------------------------------------------------

def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fmri2img-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return {"ca_file": str(cert_file), "cert_file": str(cert_file), "key_file": str(key_file)}


def test_tls_scheduler_and_client(tmp_path):
    """A TLS-only local scheduler on tls://127.0.0.1 and a second client reaching it by address."""
    pytest.importorskip("cryptography")
    tls = _self_signed(tmp_path)
    owner = connect("local", n_workers=1, processes=False, security=tls, dashboard_address="127.0.0.1:0")
    try:
        address = owner.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        remote = connect(address, security=tls)
        try:
            assert remote.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        finally:
            remote.close()
        with pytest.raises(ClusterError, match=r"TLS address but no TLS files.*\[cluster.security\]"):
            connect(address)
    finally:
        _close(owner)


def test_security_settings_are_checked(tmp_path):
    with pytest.raises(SecurityError, match=r"cluster.security: \['cert_file', 'key_file'\] not set"):
        make_security({"ca_file": "x"})
    with pytest.raises(SecurityError, match=r"unknown key\(s\) \['keyfile'\]"):
        make_security({"keyfile": "x"})
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(SecurityError, match=r"cluster.security.cert_file: .*nope.pem is not a readable file"):
        make_security({"ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "nope.pem"),
                       "key_file": str(tmp_path / "ca.pem")})
    assert make_security({}) is None and make_security(None) is None


def test_check_options_accepts_security_for_every_kind():
    for spec in ["local", "tcp://h:1", "tls://h:1", "slurm", "pbs"]:
        check_options(spec, {"security": {}})


def test_redact_hides_cluster_secrets():
    options = {"env": {"AWS_SECRET_ACCESS_KEY": "abc", "AWS_PROFILE": "lab"}, "password": "pw",
               "job_script_prologue": ["export GITHUB_TOKEN=ghp_x", "module load cuda"],
               "security": {"ca_file": "/etc/ca.pem"}, "queue": "gpu"}
    out = secrets.redact(options)
    text = repr(out)
    assert "abc" not in text and "pw'" not in text and "ghp_x" not in text
    assert out["env"]["AWS_PROFILE"] == "lab" and out["queue"] == "gpu"
    assert out["job_script_prologue"] == ["export GITHUB_TOKEN=***", "module load cuda"]


# -- job-queue options (issue 13): what a SLURM/PBS user expects, checked before anything starts -----------

def test_jobqueue_options_reach_the_job_script():
    script = job_script("slurm", cores=4, memory="16GB", processes=2, qos="long", account="lab", interface="lo",
                        local_directory="$TMPDIR", python="/shared/env/bin/python", walltime="1-00:00:00",
                        job_script_prologue=["module load cuda"], job_extra_directives="--exclusive")
    lines = script.splitlines()
    for directive in ["#SBATCH --qos=long", "#SBATCH -A lab", "#SBATCH --exclusive", "#SBATCH -t 1-00:00:00",
                      "#SBATCH --cpus-per-task=4"]:
        assert directive in lines, directive
    assert "module load cuda" in lines
    command = lines[-1]
    assert command.startswith("/shared/env/bin/python -m distributed.cli.dask_worker")
    assert "--nworkers 2" in command and "--nthreads 2" in command
    assert "--interface lo" in command and "--local-directory $TMPDIR" in command


@pytest.mark.parametrize("kind, options, message", [
    ("slurm", {"processes": 0}, "processes: expected a number of worker processes per job ≥ 1"),
    ("slurm", {"cores": 2, "processes": 4}, r"processes=4 > cores=2"),
    ("slurm", {"walltime": "4h"}, r"walltime: expected 'HH:MM:SS', 'D-HH:MM:SS' or minutes, got '4h'"),
    ("pbs", {"walltime": "1-00:00:00"}, r"walltime: expected 'HH:MM:SS' or seconds"),
    ("slurm", {"memory": "lots"}, "memory: expected an amount of memory per job"),
    ("slurm", {"queue": "gpu long"}, "queue: expected a partition/queue name"),
    ("pbs", {"qos": "long"}, "qos is a SLURM option"),
    ("slurm", {"job_extra_directives": ["#SBATCH --exclusive"]}, "without its '#SBATCH'/'#PBS' prefix"),
    ("slurm", {"job_extra_directives": [3]}, "job_extra_directives: expected a list of directives"),
    ("slurm", {"gpus": 1, "cores": 2, "processes": 2}, "use processes = 1 for GPU jobs"),
    ("slurm", {"n_workers": 2, "minimum": 0, "maximum": 2}, "not both"),
    ("slurm", {"worker_timeout": "soon"}, "worker_timeout: expected a duration"),
    ("slurm", {"python": ""}, "python: expected the path of Python on the nodes"),
])
def test_jobqueue_option_values_are_checked(kind, options, message):
    with pytest.raises(JobQueueError, match=message):
        job_script(kind, **options)


def test_interface_must_exist_here():
    from fmri2img.cluster.jobqueue import check_interface

    check_interface("lo")
    with pytest.raises(JobQueueError, match=r"no interface 'ib9' \(it has \[.*'lo'"):
        check_interface("ib9")


def test_config_load_checks_cluster_option_values_and_keeps_local_keys_local():
    from fmri2img import config as cfg

    with pytest.raises(cfg.ConfigError, match=r"^cluster: cluster option walltime: expected .* got '4h'"):
        cfg.loads('[cluster]\nspec = "slurm"\n[cluster.options]\nwalltime = "4h"\n')
    # the flat `processes = true` is the local cluster's switch, never slurm's workers per job
    spec, options = section_options({"spec": "slurm", "processes": True, "options": {"processes": 2, "cores": 2}})
    assert options["processes"] == 2
    spec, options = section_options({"spec": "slurm", "processes": True})
    assert "processes" not in options


def test_help_lists_each_kinds_options(capsys):
    from fmri2img.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ["qos", "worker_timeout", "job_extra_directives", "interface", "local_directory", "python",
                 "processes", "image", "namespace"]:
        assert name in text, name


def test_job_logs_go_under_the_outputs(tmp_path):
    from fmri2img.cluster import logs_under

    assert logs_under("s3://bucket/run/outputs") is None
    assert logs_under(str(tmp_path / "outputs")) == str(tmp_path / "outputs" / "cluster-logs")
    client = connect("slurm", logs=str(tmp_path / "outputs" / "cluster-logs"), minimum=0, maximum=1,
                     dashboard_address="127.0.0.1:0")
    try:
        script = client.cluster.job_script().splitlines()
        assert f"#SBATCH -e {tmp_path}/outputs/cluster-logs/fmri2img-%J.err" in script
        assert (tmp_path / "outputs" / "cluster-logs").is_dir()
    finally:
        _close(client)


def test_a_watch_failure_replaces_the_cancellation_it_caused():
    """When the cluster's watch ended it, the runner raises the watch's error, not a CancelledError."""
    from types import SimpleNamespace

    from fmri2img.cluster.faults import scheduler_lost

    failure = ClusterError("slurm cluster: worker job 7 ended ...")
    client = SimpleNamespace(cluster=SimpleNamespace(_fmri2img_watch=SimpleNamespace(failure=failure)))
    assert scheduler_lost(client, RuntimeError("cancelled"), stage="s", done=0, total=1) is failure


# -- Kubernetes: the manifest against the DaskCluster resource schema dask-kubernetes ships -------------------

def _daskcluster_schema() -> tuple[dict, dict]:
    """(the DaskCluster CRD, its v1 schema as strict JSON Schema: unknown fields are errors, as the API server
    would silently drop them)."""
    from pathlib import Path

    import dask_kubernetes
    import yaml

    path = Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    crd = yaml.safe_load(path.read_text())

    def strict(node):
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items() if k != "format"}
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            return node
        return [strict(x) for x in node] if isinstance(node, list) else node

    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return crd, strict(version["schema"]["openAPIV3Schema"])


def _manifest_errors(manifest: dict) -> list[str]:
    import jsonschema

    crd, schema = _daskcluster_schema()
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors({"spec": manifest["spec"]})]
    if manifest.get("apiVersion") != f"{group}/v1" or manifest.get("kind") != kind:
        errors.append(f"apiVersion/kind {manifest.get('apiVersion')}/{manifest.get('kind')}")
    if set(manifest.get("metadata", {})) - {"name", "namespace"} or not manifest["metadata"].get("name"):
        errors.append(f"metadata {manifest.get('metadata')}")
    return errors


@pytest.mark.parametrize("options", [
    {},
    {"name": "nsd", "image": "ghcr.io/lab/fmri2img:0.1", "namespace": "lab", "n_workers": 4, "cpu": "4",
     "memory": "16Gi", "gpus": 1, "threads_per_worker": 2, "env": {"AWS_PROFILE": "lab"}, "idle_timeout": 600},
    {"cpu": "500m", "memory": "2G", "scheduler_cpu": "250m", "scheduler_memory": "1Gi", "minimum": 0, "maximum": 8},
])
def test_kubernetes_manifest_matches_the_daskcluster_schema(options):
    pytest.importorskip("jsonschema")
    manifest = kubernetes_spec(**options)
    assert _manifest_errors(manifest) == []


def test_the_schema_check_catches_bad_manifests():
    import copy

    pytest.importorskip("jsonschema")
    good = kubernetes_spec(gpus=1)
    bad = copy.deepcopy(good)
    bad["spec"]["worker"]["replicas"] = "2"
    bad["spec"]["worker"]["spec"]["containers"][0]["resourcez"] = {}
    del bad["spec"]["scheduler"]["spec"]["containers"][0]["name"]
    errors = " | ".join(_manifest_errors(bad))
    assert "worker/replicas: '2' is not of type 'integer'" in errors
    assert "'resourcez' was unexpected" in errors
    assert "'name' is a required property" in errors


@pytest.mark.parametrize("options, message", [
    ({"name": "NSD_1"}, "name: expected a Kubernetes name"),
    ({"namespace": "-lab"}, "namespace: expected a Kubernetes name"),
    ({"cpu": "four"}, "cpu: expected a Kubernetes quantity"),
    ({"memory": "16 GB"}, "memory: expected a Kubernetes quantity"),
    ({"minimum": 4, "maximum": 2}, "minimum ≤ maximum"),
    ({"image": ""}, "image: expected an image reference"),
])
def test_kubernetes_option_values_are_checked(options, message):
    with pytest.raises(KubernetesError, match=message):
        kubernetes_spec(**options)


def test_the_command_line_reports_the_watch_failure_instead_of_a_cancellation(monkeypatch):
    """A stage waiting outside the task runner (dask.compute, wait) sees only a CancelledError when the watch
    closes the cluster; the command's cluster context raises the watch's error instead."""
    import argparse
    import concurrent.futures
    from types import SimpleNamespace

    import fmri2img.cluster as cluster_pkg
    from fmri2img.cli import runtime as cli

    failure = ClusterError("slurm cluster: no Dask worker connected within 15 s ...")
    client = SimpleNamespace(cluster=SimpleNamespace(_fmri2img_watch=SimpleNamespace(failure=failure)),
                             dashboard_link="", close=lambda **kw: None)
    seen = {}
    monkeypatch.setattr(cluster_pkg, "connect_section",
                        lambda section, logs=None, command=False: seen.update(logs=logs, command=command) or client)
    args = argparse.Namespace(cluster="slurm", workers=None, cluster_option=[])
    with pytest.raises(ClusterError, match="no Dask worker connected"):
        with cli.cluster_from(args, outputs="/tmp/run/outputs"):
            raise concurrent.futures.CancelledError()
    assert seen["logs"] == "/tmp/run/outputs/cluster-logs" and seen["command"] is True
    client.cluster._fmri2img_watch.failure = None
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with cli.cluster_from(args):
            raise KeyError("x")


def test_waiting_for_workers_is_reported_long_before_worker_timeout(caplog, tmp_path):
    """Work waiting with no worker is reported once (cluster, jobs, what to check), then fails at worker_timeout."""
    import logging
    import time as _time
    from types import SimpleNamespace

    import distributed  # noqa: F401  (registers the distributed.* dask config the watch reads)

    from fmri2img.cluster.jobqueue import KINDS
    from fmri2img.cluster.watch import JobWatch

    watch = JobWatch(KINDS["slurm"], job={"log_directory": str(tmp_path)}, options={}, worker_timeout=600,
                     adaptive=False)
    watch.notice_after_s = 0.05
    task = SimpleNamespace(state="no-worker")
    cluster = SimpleNamespace(worker_spec={"0": {}}, scheduler=SimpleNamespace(tasks={"t": task}))
    with caplog.at_level(logging.WARNING, logger="fmri2img"):
        watch._check_no_worker(cluster)
        _time.sleep(0.1)
        watch._check_no_worker(cluster)
        watch._check_no_worker(cluster)
    notices = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(notices) == 1 and "slurm cluster: no Dask worker has connected for" in notices[0]
    assert "squeue" in notices[0] and str(tmp_path) in notices[0] and watch.failure is None
    watch.worker_timeout = 0.01
    watch._check_no_worker(cluster)
    assert watch.failure is not None and "no Dask worker connected within" in str(watch.failure)
    assert JobWatch.notice_after_s < 120
