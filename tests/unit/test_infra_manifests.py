"""The Kubernetes manifests (infra/k8s) and the container image (infra/docker) hold together, offline.

The overlays are rendered with `kubectl kustomize`; core kinds are validated with Kubernetes' own schemas
(`kubernetes-validate`, strict: unknown fields fail), RayCluster and RayJob with the vendored KubeRay CRDs
(tests/fixtures/kuberay-crds, made strict the same way). The rigpose commands the manifests run are parsed by the
live Typer app in-process (no process per command), their job files loaded with the overrides they pass, and the
Secrets they reference are checked to be created by name in infra/README.md, never written in the repo.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
README = REPO / "infra" / "README.md"
CRDS = REPO / "tests" / "fixtures" / "kuberay-crds"
OVERLAYS = ("dev", "prod")
NAMESPACE = {"dev": "rigpose-dev", "prod": "rigpose"}
K8S_VERSION = "1.32"  # schemas shipped by kubernetes-validate; the oldest Kubernetes the manifests target
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs load in 1 s instead of 10
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY|CREDENTIAL", re.IGNORECASE)


@functools.cache
def _render(overlay: str) -> tuple[dict, ...] | str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not installed: the overlays cannot be rendered"
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path.relative_to(REPO)} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def rendered(overlay: str) -> tuple[dict, ...]:
    """The overlay's (or "base"'s) resources as `kubectl kustomize` renders them (skips where kubectl is absent)."""
    docs = _render(overlay)
    if isinstance(docs, str):
        pytest.skip(docs)
    return docs


def one(docs: tuple[dict, ...], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(node: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """(path, pod spec) for every pod spec inside a resource, custom resources included: any mapping with a list of
    `containers` (Deployment and CronJob templates, RayCluster head and worker groups, RayJob submitter)."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            yield from pod_specs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_specs(value, f"{where}/{i}")


def containers(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    """(label, container, pod spec) for every container and init container of `doc`; KubeRay's autoscaler sidecar
    (spec.autoscalerOptions) counts as one, with the head's pod spec."""
    label = f"{doc['kind']}/{doc['metadata']['name']}"
    for where, spec in pod_specs(doc):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{label}{where} container {c['name']}", c, spec
    if doc["kind"] == "RayCluster" and "autoscalerOptions" in doc["spec"]:
        yield f"{label} autoscaler", doc["spec"]["autoscalerOptions"], doc["spec"]["headGroupSpec"]["template"]["spec"]


def all_containers(overlay: str) -> list[tuple[str, dict, dict]]:
    return [c for doc in rendered(overlay) for c in containers(doc)]


def container_env(docs: tuple[dict, ...], container: dict) -> dict[str, str]:
    """The environment a container starts with, as far as the manifests say: ConfigMap data, literal values, and a
    placeholder for values taken from Secrets."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from a Secret>")
    return env


def expand(text: str, env: dict[str, str], pattern: str, where: str) -> str:
    def sub(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        assert name in env, f"{where}: {m.group(0)} names no variable of its container ({sorted(env)})"
        return env[name]
    return re.sub(pattern, sub, text)


KUBELET_VAR = r"\$\((\w+)\)"          # $(VAR) in command / args, expanded by the kubelet
SHELL_VAR = r"\$\{(\w+)\}|\$(\w+)"    # ${VAR} in a RayJob entrypoint, expanded by the head's shell


def commands(docs: tuple[dict, ...]) -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every command the manifests run: container command + args (kubelet-expanded), and each
    RayJob's entrypoint as the head of its RayCluster runs it (through a shell, with the head's environment)."""
    for doc in docs:
        for label, c, _ in containers(doc):
            argv = [*c.get("command", []), *c.get("args", [])]
            if argv:
                env = container_env(docs, c)
                yield label, [expand(a, env, KUBELET_VAR, label) for a in argv]
        if doc["kind"] == "RayJob":
            cluster = one(docs, "RayCluster", doc["spec"]["clusterSelector"]["ray.io/cluster"])
            head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            label = f"RayJob/{doc['metadata']['name']} entrypoint"
            yield label, shlex.split(expand(doc["spec"]["entrypoint"], container_env(docs, head), SHELL_VAR, label))


def rigpose_args(argv: list[str]) -> list[str] | None:
    """The arguments after `rigpose` (or `python -m rigpose`, or inside `ray job submit ... -- ...`); None if the
    command is not rigpose's."""
    if argv and Path(argv[0]).name == "rigpose":
        return argv[1:]
    if argv[:3] == ["python", "-m", "rigpose"]:
        return argv[3:]
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        return rigpose_args(argv[argv.index("--") + 1:])
    return None


@functools.cache
def cli_help(subcommand: str) -> str:
    from typer.testing import CliRunner

    from rigpose.cli.main import app

    result = CliRunner().invoke(app, [subcommand, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def parse_rigpose(args: list[str], where: str) -> tuple[str, str | None, list[str]]:
    """Parse `rigpose <args>` with the live CLI (a usage error fails the test); (subcommand, job file, --set values)."""
    import typer

    from rigpose.cli.main import app

    root = typer.main.get_command(app)
    root_ctx = root.context_class(root, info_name="rigpose")
    assert args and root.get_command(root_ctx, args[0]) is not None, f"{where}: `rigpose {shlex.join(args)}`: no " \
                                                                     f"such command"
    sub = root.get_command(root_ctx, args[0])
    try:
        ctx = sub.make_context(args[0], list(args[1:]), parent=root_ctx)
    except typer.TyperException as e:  # Typer's click: usage errors, bad values
        raise AssertionError(f"{where}: `rigpose {shlex.join(args)}` does not parse: {e}") from None
    sets = next((list(ctx.params[p.name] or []) for p in sub.params if "--set" in getattr(p, "opts", [])), [])
    job = ctx.params.get("job_file")
    return args[0], None if job is None else str(job), sets


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("500m", "2", "16Gi") as a number (CPUs, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m and (not m[2] or m[2] in units), f"not a quantity: {value!r}"
    return float(m[1]) * units.get(m[2], 1)


def test_every_yaml_under_infra_k8s_parses_and_opens_with_a_purpose_line() -> None:
    files = sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])
    assert len(files) >= 8, files
    for path in files:
        text = path.read_text()
        assert text.startswith("# "), f"{path.relative_to(REPO)}: no purpose line (a comment) at the top"
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert docs, f"{path.relative_to(REPO)}: no YAML document"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_own_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "RayCluster", "RayJob", "CronJob", "Deployment", "Service", "ConfigMap"} <= kinds, kinds
    assert one(docs, "Namespace", NAMESPACE[overlay])
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == NAMESPACE[overlay], f"{d['kind']}/{d['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_against_the_kubernetes_schemas(overlay: str) -> None:
    import kubernetes_validate

    core = [d for d in rendered(overlay) if not d["apiVersion"].startswith("ray.io/")]
    for d in core:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}") from None
    # strict: a misspelt field is an error, not silently dropped
    bad = copy.deepcopy(one(rendered(overlay), "CronJob", "rigpose-retrain"))
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _strict(schema: dict) -> dict:
    """`schema` with additionalProperties: false wherever it lists properties and allows no unknown fields (what the
    API server's strict field validation, kubectl's default, does to a CRD's structural schema)."""
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for sub in schema.get("properties", {}).values():
        _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    return schema


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    group, version = api_version.split("/")
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=FAST_LOADER)  # 1-1.4 MB each
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
            return jsonschema.Draft7Validator(_strict(copy.deepcopy(schema)))
    raise AssertionError(f"no vendored CRD for {kind} {api_version} in {CRDS.relative_to(REPO)}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_resources_validate_against_the_vendored_crds(overlay: str) -> None:
    kuberay = [d for d in rendered(overlay) if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in kuberay} == {"RayCluster", "RayJob"}
    for d in kuberay:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in crd_validator(d["kind"], d["apiVersion"]).iter_errors(d)]
        assert not errors, f"{d['kind']}/{d['metadata']['name']}:\n" + "\n".join(errors[:10])
    bad = copy.deepcopy(one(rendered(overlay), "RayCluster", "rigpose"))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert not crd_validator("RayCluster", bad["apiVersion"]).is_valid(bad)


def test_vendored_crds_are_the_files_their_source_note_names() -> None:
    note = (CRDS / "SOURCE.md").read_text()
    listed = dict(re.findall(r"^\| (ray\.io_\w+\.yaml) \| ([0-9a-f]{64}) \|$", note, re.MULTILINE))
    assert set(listed) == {p.name for p in CRDS.glob("*.yaml")} == {"ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"}
    for name, digest in listed.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, f"{name} changed since it was vendored"
    tag = re.search(r"tag (v[\d.]+)", note)[1]
    assert f"--version {tag.removeprefix('v')}" in README.read_text(), "infra/README.md installs another operator"


def pinned(image: str) -> bool:
    """Pinned: a digest, or a tag other than `latest` (a registry port is no tag)."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.split(":", 1)[1] not in ("", "latest")


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])  # base too: an overlay's `images:` would hide its tags
def test_every_image_is_pinned_by_tag_or_digest(overlay: str) -> None:
    for label, c, _ in all_containers(overlay):
        if "image" in c or "autoscaler" not in label:  # the autoscaler defaults to the head's image
            assert pinned(c.get("image", "")), f"{label}: image {c.get('image')!r} is not pinned by tag or digest"
    assert not pinned("rigpose") and not pinned("rigpose:latest") and not pinned("registry:5000/rigpose")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_nodes_share_one_image_of_the_projects_version(overlay: str) -> None:
    docs = rendered(overlay)
    cluster = one(docs, "RayCluster", "rigpose")
    images = {c["image"] for _, c, _ in containers(cluster) if "image" in c}
    assert len(images) == 1, f"Ray needs the same Python and Ray on every node: {images}"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    tag = images.pop().rsplit(":", 1)[1]
    has_gpus = any(g["maxReplicas"] > 0 and "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]
                   ["limits"] for g in cluster["spec"]["workerGroupSpecs"])
    assert tag == f"{version}-{'cuda' if has_gpus else 'cpu'}", f"{overlay}: image tag {tag}, rigpose {version}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_written_in_the_manifests(overlay: str) -> None:
    from rigpose.tracking.secrets import SECRET_ENV, has_password

    docs = rendered(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created by hand, never kept in the repo"
    for path in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), f"{path.relative_to(REPO)}"
    for label, c, _ in all_containers(overlay):
        for item in c.get("env", []):
            if "value" in item:
                name = item["name"]
                assert name not in SECRET_ENV and not SECRET_LIKE.search(name), f"{label}: {name} has a literal value"
    for d in docs:
        if d["kind"] == "ConfigMap":
            for key, value in d.get("data", {}).items():
                assert not SECRET_LIKE.search(key) or key.endswith("_PATH"), f"ConfigMap {d['metadata']['name']}: {key}"
                assert not re.search(r"^\s*\w*password\s*=", value, re.IGNORECASE | re.MULTILINE), key
        assert not has_password(yaml.safe_dump(d)), f"{d['kind']}/{d['metadata']['name']}: a URL with a password"


def secret_references(docs: tuple[dict, ...]) -> dict[str, set[str]]:
    """{Secret name: keys read by key} for every reference (secretKeyRef, envFrom secretRef, secret volumes,
    RayCluster authOptions, whose key is KubeRay's `auth_token`)."""
    refs: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] == "RayCluster" and "authOptions" in doc["spec"]:
            refs.setdefault(doc["spec"]["authOptions"]["secretName"], set()).add("auth_token")
        for _, c, spec in containers(doc):
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    refs.setdefault(source["secretRef"]["name"], set())
            for item in c.get("env", []):
                if "secretKeyRef" in item.get("valueFrom", {}):
                    ref = item["valueFrom"]["secretKeyRef"]
                    refs.setdefault(ref["name"], set()).add(ref["key"])
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    refs.setdefault(volume["secret"]["secretName"], set())
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_referenced_is_created_by_name_in_the_readme(overlay: str) -> None:
    from rigpose.tracking.secrets import SECRET_ENV

    text = README.read_text().replace("\\\n", " ")
    created = {m[1]: set(re.findall(r"--from-literal=(\w+)=", m[2]))
               for m in re.finditer(r"kubectl [^\n]*?create secret generic ([\w-]+)([^\n]*)", text)}
    known = {*SECRET_ENV, "MLFLOW_TRACKING_USERNAME", "PGPASSWORD", "auth_token"}
    for name, keys in secret_references(rendered(overlay)).items():
        assert name in created, f"Secret {name} is referenced but infra/README.md never creates it"
        assert keys <= created[name], f"Secret {name}: keys {keys - created[name]} not created in infra/README.md"
    for name, keys in created.items():
        assert keys and keys <= known, f"Secret {name} in infra/README.md: keys {keys - known} no code reads"
    assert not re.search(r"--from-literal=\w+=(?!\"?\$)", text), "a --from-literal value is not read from a variable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rigpose_commands_in_the_manifests_parse_and_their_job_files_load(overlay: str) -> None:
    from rigpose.config import RetrainJob, load_config, load_job

    found = set()
    for where, argv in commands(rendered(overlay)):
        args = rigpose_args(argv)
        if args is None:
            continue
        subcommand, job_file, sets = parse_rigpose(args, where)
        found.add(subcommand)
        for flag in {a.split("=", 1)[0] for a in args if a.startswith("--")}:
            assert flag in cli_help(subcommand), f"{where}: `rigpose {subcommand} --help` does not list {flag}"
        assert job_file and job_file.startswith("jobs/") and (REPO / job_file).is_file(), \
            f"{where}: job file {job_file!r} is not one of the repository's jobs/ (what the image holds)"
        try:
            if subcommand == "train":
                load_job(REPO / job_file, sets)
            elif subcommand == "retrain":
                job = load_config(RetrainJob, REPO / job_file, sets)
                assert job.train_job.startswith("jobs/") and (REPO / job.train_job).is_file(), job.train_job
                load_job(REPO / job.train_job, job.overrides)
        except ValueError as e:
            raise AssertionError(f"{where}: {e}") from None
    assert found == {"train", "retrain"}, f"{overlay}: rigpose commands found: {found}"
    with pytest.raises(AssertionError, match="does not parse"):
        parse_rigpose(["retrain", "jobs/retrain.yaml", "--evry", "6h"], "self-check")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_a_non_root_security_context(overlay: str) -> None:
    for label, c, spec in all_containers(overlay):
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{label}: no cpu/memory {kind}"
        ctx, pod = c.get("securityContext", {}), spec.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, f"{label}: runAsNonRoot"
        assert ctx.get("runAsUser", pod.get("runAsUser", 0)) > 0, f"{label}: runAsUser"
        assert ctx.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation"
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), f"{label}: capabilities not dropped"
        assert ctx.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_cronjob_forbids_overlapping_cycles(overlay: str) -> None:
    cron = one(rendered(overlay), "CronJob", "rigpose-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    argv = next(a for w, a in commands((cron, *rendered(overlay))) if w.startswith("CronJob/"))
    assert (rigpose_args(argv) or [])[:1] == ["retrain"], argv


def test_raycluster_autoscales_a_cpu_and_a_gpu_group_sized_per_overlay() -> None:
    groups, sizes = {}, {}
    for overlay in OVERLAYS:
        cluster = one(rendered(overlay), "RayCluster", "rigpose")
        assert cluster["spec"]["enableInTreeAutoscaling"] is True
        by_kind = {}
        for g in cluster["spec"]["workerGroupSpecs"]:
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            by_kind["gpu" if quantity(limits.get("nvidia.com/gpu", 0)) > 0 else "cpu"] = g
        assert set(by_kind) == {"cpu", "gpu"}, f"{overlay}: a CPU and a GPU worker group"
        groups[overlay] = by_kind
        head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        worker = by_kind["cpu"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        sizes[overlay] = [quantity(r[k]) for r in (head, worker) for k in ("cpu", "memory")]
    dev, prod = groups["dev"], groups["prod"]
    assert dev["cpu"]["replicas"] == dev["cpu"]["maxReplicas"] == 1 and dev["gpu"]["maxReplicas"] == 0
    assert prod["gpu"]["maxReplicas"] > 0 and prod["cpu"]["maxReplicas"] > dev["cpu"]["maxReplicas"]
    assert all(d < p for d, p in zip(sizes["dev"], sizes["prod"], strict=True)), sizes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_uses_postgres_s3_basic_auth_and_a_host_allow_list(overlay: str) -> None:
    docs = rendered(overlay)
    deployment, service = one(docs, "Deployment", "rigpose-mlflow"), one(docs, "Service", "rigpose-mlflow")
    argv = next(a for w, a in commands((deployment, *docs)) if w.startswith("Deployment/"))
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert argv[:2] == ["mlflow", "server"] and flags["--app-name"] == "basic-auth", argv
    mlflow_version = dockerfile()[0]["MLFLOW_VERSION"]  # the server image is built with it
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{mlflow_version}")
    # the driver named: the image installs psycopg2, and SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3
    assert flags["--backend-store-uri"].startswith("postgresql+psycopg2://"), flags
    assert flags["--artifacts-destination"].startswith("s3://") and "--serve-artifacts" in argv, flags
    hosts = flags["--allowed-hosts"].split(",")
    assert "rigpose-mlflow:5000" in hosts and "*" not in hosts, hosts
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]["port"]
    env = container_env(docs, one(docs, "RayCluster", "rigpose")["spec"]["headGroupSpec"]["template"]["spec"]
                        ["containers"][0])
    assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{port}", env


def dockerfile() -> tuple[dict[str, str], list[tuple[str, str | None, list[str]]]]:
    """(global ARG defaults, [(image, stage name, the stage's instruction lines)]) of infra/docker/Dockerfile."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args, stages = {}, []
    for ln in lines:
        if m := re.fullmatch(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", ln, re.IGNORECASE):
            stages.append((m[1], m[2], []))
        elif stages:
            stages[-1][2].append(ln)
        elif m := re.fullmatch(r"ARG\s+(\w+)=(\S+)", ln):
            args[m[1]] = m[2]
    return args, stages


def test_dockerfile_pins_cpu_torch_first_and_its_base_images_by_tag() -> None:
    args, stages = dockerfile()
    names = {name for _, name, _ in stages}
    assert {"base-cpu", "base-cuda", "build", "mlflow-server", "rigpose"} <= names and stages[-1][1] == "rigpose"
    makefile_torch = re.search(r"^TORCH_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1]
    assert args["TORCH_VERSION"] == makefile_torch == "2.13.0"
    assert args["VARIANT"] == "cpu"
    for image, name, _ in stages:
        resolved = {image.replace("${VARIANT}", v) for v in ("cpu", "cuda")}
        assert all(r in names or pinned(r) for r in resolved), f"stage {name}: base image {image} is not pinned"
    base = {name: image for image, name, _ in stages}
    assert base["base-cuda"].startswith(("nvidia/cuda:", "pytorch/pytorch:")), base["base-cuda"]
    body = {name: " ".join(lines) for _, name, lines in stages}
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in body["base-cpu"]
    build = body["build"]
    torch_at = build.index('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert torch_at < build.index('pip install ".[mocap]"'), "torch must be installed before the project"
    rigpose_stage = next(lines for _, name, lines in stages if name == "rigpose")
    assert "WORKDIR /app" in rigpose_stage and "COPY jobs/ jobs/" in rigpose_stage
    assert any(re.fullmatch(r"USER [1-9]\d*(:\d+)?", ln) for ln in rigpose_stage), "the image runs as root"
    assert "mlflow[auth]==${MLFLOW_VERSION}" in body["mlflow-server"]
