"""The run configuration's sections: one dataclass per TOML table, defaults from the reference method.

Example (``fmri2img run config.toml``)::

    stages = ["ingest"]

    [store]
    url = "s3://my-lab-bucket/nsd.zarr"

    [source]
    url = "s3://natural-scenes-dataset"        # anonymous by default for this bucket

    [cluster]
    spec = "local"                             # or "tcp://scheduler:8786"

    [ingest]
    subjects = [1, 2, 5, 7]
    sessions = "1-37"

Storage roots and credentials are given here or at run time, never baked into code;
credentials in ``storage_options`` are never written to the store, logs or reports
(:meth:`Config.redacted`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fmri2img.config.errors import ConfigError
from fmri2img.storage import secrets

PUBLIC = "public"


def parse_sessions(text: str | int | list, *, field_name: str = "ingest.sessions") -> tuple[int, ...] | None:
    """``"1-37"``, ``"1,3,5-7"``, ``5`` or ``[1, 2]`` → sorted unique 1-based sessions.

    ``"public"`` (the default) returns ``None``: sessions 1–37 (NSD's public sessions, as
    Brain-Diffuser uses), clipped to the sessions the design has (mini-NSD has fewer).
    """
    if text == PUBLIC:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        items = [text]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    elif isinstance(text, str):
        items = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                if sep:
                    items.extend(range(int(lo), int(hi) + 1))
                else:
                    items.append(int(lo))
            except ValueError:
                raise ConfigError(
                    f"{field_name}: cannot read {text!r}; expected session numbers like '1-37' or '1,3,5-7'"
                ) from None
    else:
        raise ConfigError(f"{field_name}: expected a string like '1-37' or a list of integers, got {text!r}")
    if not items or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in items):
        raise ConfigError(f"{field_name}: sessions are integers ≥ 1 (NSD sessions 1–37 are public), got {text!r}")
    return tuple(sorted(set(items)))


@dataclass
class StoreConfig:
    """Where the project store lives."""

    url: str = "./runs/default/store.zarr"
    storage_options: dict = field(default_factory=dict)


@dataclass
class SourceConfig:
    """Where NSD-format data is read from (the public bucket, a mirror, or mini-NSD)."""

    url: str = "s3://natural-scenes-dataset"
    storage_options: dict = field(default_factory=dict)
    #: COCO_73k_annots_curated.npy; default: <url>/COCO_73k_annots_curated.npy
    captions_url: str = ""


@dataclass
class ClusterConfig:
    """Which Dask cluster runs the stages (see fmri2img.cluster)."""

    spec: str = "local"
    n_workers: int = 0  # 0: one per core
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    processes: bool = True
    #: local: extra workers advertising the GPU resource ("auto": one per visible GPU)
    gpu_workers: int = 0
    #: the kind's options, each checked when the configuration loads (slurm/pbs: cores, memory, processes,
    #: walltime, queue, account, qos, gpus, job_extra_directives, job_script_prologue, interface, local_directory,
    #: python, log_directory, worker_timeout, n_workers or minimum/maximum, ...; kubernetes: image, namespace,
    #: cpu, memory, gpus, env, ...; `fmri2img run --help` lists them all)
    options: dict = field(default_factory=dict)
    #: TLS for tls:// addresses: ca_file, cert_file, key_file (paths; never logged or stored)
    security: dict = field(default_factory=dict)


@dataclass
class IngestConfig:
    """NSD → store (REFERENCE.md §1)."""

    subjects: list = field(default_factory=lambda: [1])
    #: "public" = 1–37 clipped to the design (Brain-Diffuser's choice), or e.g. "1-37", "1,3,5-7"
    sessions: str = PUBLIC
    #: read betas from the uncompressed .hdf5 twin by range when present ("hdf5": only the masked voxels' chunks of
    #: NSD's chunked files are fetched), or stream the .nii.gz ("nii.gz")
    prefer: str = "hdf5"
    #: units of the betas files: "nsd" = NSD's int16 percent signal change × 300 (float files refused), or a number
    #: the values are divided by (1: floats already in percent signal change; 300: floats × 300)
    betas_scale: str | float = "nsd"
    #: what to do with NaN betas: "error" (default) or "zero" (replace by 0 and record the count)
    nan_policy: str = "error"
    stimuli: bool = True
    #: which NSD experiment: "nsd" (the main one) or "nsdimagery" (NSD-Imagery: subjects/subjNN/imagery and
    #: imagery/targets; sessions and stimuli do not apply)
    experiment: str = "nsd"

    def session_list(self) -> tuple[int, ...] | None:
        return parse_sessions(self.sessions)


@dataclass
class GlmConfig:
    """The glm stage: a subject's time series → single-trial betas (GLMsingle's types A–D), before ingest.

    NSD's time-series layout is read from [source]; a BIDS dataset with fMRIPrep derivatives from
    ``bids`` (then ``participant`` goes to store subject ``subjects[0]``).
    """

    #: store subjects to fit (NSD: their own numbers)
    subjects: list = field(default_factory=list)
    #: NSD sessions, e.g. "1-3"; "all": every session with time series
    sessions: str = "all"
    #: "glmsingle" (GLMsingle's defaults) or "nsd" (NSD's own GLM)
    preset: str = "glmsingle"
    #: GlmOptions fields that override the preset's, e.g. {n_pcs = 10, fracs = [...]}
    options: dict = field(default_factory=dict)
    #: a TSV of HRFs (one column an HRF, one row a time step; a header "step" line gives the step in s);
    #: default GLMsingle's 20-HRF library
    hrf_library: str = ""
    #: the model whose betas become subjects/subjNN/betas: fithrf, fithrf_glmdenoise, fithrf_glmdenoise_rr
    model: str = "fithrf_glmdenoise_rr"
    #: voxels per task (memory per worker grows with it: about 22 kB a voxel for an NSD session)
    block_size: int = 4096
    #: NSD: "func1pt8mm" (default) or "func1mm"; BIDS: the fMRIPrep space (default "T1w")
    space: str = ""
    #: the brain mask (default: NSD's brainmask.nii.gz; BIDS: the runs' brain masks)
    mask: str = ""
    #: also write NSD-layout betas files (int16 × 300) under this directory or URL
    export: str = ""
    #: keep the staged time series in the store after a session is done
    keep_timeseries: bool = False
    #: BIDS: the raw dataset, its fMRIPrep derivatives (default <bids>/derivatives/fmriprep), the participant
    bids: str = ""
    derivatives: str = ""
    participant: str = ""
    session: str = ""
    task: str = ""
    #: BIDS: the events column naming the stimulus (a file, or a 0-based 73k id)
    stim_column: str = "stim_file"
    #: BIDS: fMRIPrep confounds as extra regressors, e.g. "none", "simple", "motion=basic+high_pass"
    confounds: str = "none"
    #: BIDS: onsets off the TR grid: "round" (nearest volume) or "resample" (cubic, onto a grid that fits them)
    onsets: str = "round"
    storage_options: dict = field(default_factory=dict)


@dataclass
class FeaturesConfig:
    """Feature extraction: which extractors, with which options (see fmri2img.models.extractors)."""

    #: extractor name → options, e.g. {"vdvae": {"n_blocks": 31, "batch_size": 8}, "pixels": {"side": 64}};
    #: a name that is not a kind names its kind: {"vdvae-10": {"kind": "vdvae", "n_blocks": 10}}
    extractors: dict = field(default_factory=lambda: {"pixels": {"side": 64}})
    #: images per task and per chunk along the image axis
    images_per_task: int = 128


@dataclass
class RegressConfig:
    """Ridge from train fMRI to each feature set (REFERENCE.md §3)."""

    #: subjects to fit; empty: the ingest subjects
    subjects: list = field(default_factory=list)
    #: feature name → BlockRidge options; features without an entry get Brain-Diffuser's
    #: defaults (alphas 50,000 / 100,000 / 60,000, test-batch calibration)
    targets: dict = field(default_factory=dict)
    #: which feature sets to fit; empty: every extractor of [features]
    features: list = field(default_factory=list)
    #: also write explicit voxel × target weights (large)
    save_weights: bool = False


@dataclass
class ReconstructConfig:
    """Named reconstruction runs (stage 1 → stage 2), REFERENCE.md §4."""

    subjects: list = field(default_factory=list)
    #: run name → {stage1, preset, settings, vision, text, tiny}; "brain-diffuser" = its defaults,
    #: "seed-text-0.55" = the seed paper's text-only strength-0.55 run
    runs: dict = field(default_factory=lambda: {"brain-diffuser": {"stage1": "vdvae", "preset": "brain-diffuser"}})
    images_per_task: int = 8
    #: "auto" (CUDA, MPS or CPU per worker), or "cpu", "cuda", "mps"
    device: str = "auto"


@dataclass
class EvaluateConfig:
    """The eight metrics (REFERENCE.md §5) of every reconstruction run."""

    subjects: list = field(default_factory=list)
    #: runs to score; empty: every [reconstruct] run
    runs: list = field(default_factory=list)
    parts: list = field(default_factory=lambda: ["stage1", "final"])
    #: evaluation networks (alexnet2, alexnet5, inceptionv3, clip, efficientnet_b1, swav); empty: all
    nets: list = field(default_factory=list)
    images_per_task: int = 16
    device: str = "auto"
    #: true: nets without [weights] become tiny random stand-ins (cheap; the demo); false: the full-size nets
    tiny: bool = False


@dataclass
class RoiConfig:
    """Brain-Diffuser's ROI analysis: each ROI's synthetic fMRI decoded by reconstruction runs."""

    subjects: list = field(default_factory=list)
    #: runs to decode with; empty: every [reconstruct] run
    runs: list = field(default_factory=list)


@dataclass
class DecodeConfig:
    """``fmri2img decode --config``: a fitted subject's models applied to new betas (the clinician's path)."""

    subject: int = 1
    #: a session file in the subject's func1pt8mm space (.nii.gz/.nii/.hdf5/.h5) or its masked voxels (.npy/.zarr)
    betas: str = ""
    #: name of the decoded group (decoded/<name>); default: the input's file name
    name: str = ""
    #: 1-based trials, e.g. "1-750"; or a CSV with columns trial[,image] (image: 0-based NSD-73k id)
    trials: str = ""
    trials_file: str = ""
    #: runs to decode with ([reconstruct.runs] names); empty: every [reconstruct] run
    runs: list = field(default_factory=list)
    #: "nsd" (NSD's int16 × 300; arrays: percent signal change) or a number the values are divided by
    betas_scale: str | float = "nsd"
    #: the subject's nsdgeneral.nii.gz; default: the one of the source it was ingested from
    mask: str = ""
    #: "loo" (non-transductive, default) or "none"; the transductive "test_batch" is refused
    calibration: str = "loo"
    #: "align-to-subjMM": the subject is a new one aligned to subject MM (fmri2img align), decoded by MM's models
    via: str = ""
    #: evaluation networks when the images shown are known; empty: all
    nets: list = field(default_factory=list)
    images_per_task: int = 8
    device: str = "auto"
    #: fsspec options of the betas, trials and mask URLs (credentials never stored)
    storage_options: dict = field(default_factory=dict)
    #: true: decode the subject's ingested NSD-Imagery betas (ingest experiment "nsdimagery") instead of
    #: betas, scored per task against the imagery targets (as decode --imagery)
    imagery: bool = False
    #: with imagery: the tasks to decode, some of "vision", "imagery", "attention"; empty: all three
    tasks: list = field(default_factory=list)


@dataclass
class AlignConfig:
    """The ``align`` stage (``fmri2img align``): a new subject's voxels → a fitted reference subject's."""

    #: the new subject (0: none); its scans are then decoded with [decode] via = "align-to-subjMM"
    subject: int = 0
    reference: int = 1
    #: the new subject's sessions to align on, e.g. "1" or "1-3"; "": 1, or every session of a BIDS participant
    sessions: str = ""
    #: "encoding" (the reference's encoding-model pseudo-responses; measured best), "shared" or "hybrid"
    targets: str = "encoding"
    encoding_features: list = field(default_factory=list)


@dataclass
class OutputsConfig:
    """Where PNG files and reports are written (a local path or URL outside the store)."""

    url: str = "./runs/default/outputs"
    storage_options: dict = field(default_factory=dict)


@dataclass
class WeightsConfig:
    """Where model weights are (local paths or fsspec URLs); nothing is downloaded at run time."""

    vdvae: str = ""   # imagenet64-iter-1600000-model-ema.th
    clip: str = ""    # a transformers-format CLIP ViT-L/14 directory
    versatile_diffusion: str = ""      # a diffusers-format Versatile Diffusion directory
    versatile_diffusion_pth: str = ""  # or the original vd-four-flow-v1-0-fp16-deprecated.pth ...
    kl_f8_pth: str = ""                # ... with kl-f8.pth
    # evaluation networks: torchvision's published state dicts and the SwAV ResNet-50 checkpoint
    alexnet: str = ""
    inception_v3: str = ""
    efficientnet_b1: str = ""
    swav: str = ""
    storage_options: dict = field(default_factory=dict)


@dataclass
class Config:
    """The whole run configuration."""

    stages: list = field(default_factory=lambda: ["ingest"])
    seed: int = 0
    store: StoreConfig = field(default_factory=StoreConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    glm: GlmConfig = field(default_factory=GlmConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    regress: RegressConfig = field(default_factory=RegressConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    def stage_subjects(self, section: str) -> list:
        return list(getattr(self, section).subjects or self.ingest.subjects)


    def regress_subjects(self) -> list:
        return list(self.regress.subjects or self.ingest.subjects)

    def regress_features(self) -> list:
        return list(self.regress.features or self.features.extractors)

    def extractor_kind(self, name: str) -> str:
        """The registered kind of extractor ``name``: its ``kind`` option, else the name (vdvae-10 → vdvae)."""
        return (self.features.extractors.get(name) or {}).get("kind", name)

    def extractor_options(self, name: str) -> dict:
        """The options of extractor ``name`` with its weights filled in from [weights] (by its kind)."""
        from fmri2img.models.extractors import WEIGHTS_KEY

        options = dict(self.features.extractors.get(name) or {})
        key = WEIGHTS_KEY.get(self.extractor_kind(name))
        if key and not options.get("tiny") and "weights" not in options and getattr(self.weights, key):
            options["weights"] = getattr(self.weights, key)
            if self.weights.storage_options:
                options["storage_options"] = dict(self.weights.storage_options)
        return options

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def redacted(self) -> dict:
        """The configuration with every credential replaced by ``***`` (safe to log or store).

        Credentials live in ``storage_options`` tables, cluster options and URLs (``user:pass@``).
        """
        return _redact_tree(self.to_dict())


def _redact_tree(data: Any, key: str = "") -> Any:
    """Redact what may hold credentials (storage and cluster options, URLs) and nothing else
    (``tokens = "all"`` of an extractor is not a secret)."""
    if key in ("options", "storage_options"):
        return secrets.redact(data)
    if isinstance(data, dict):
        return {k: _redact_tree(v, k) for k, v in data.items()}
    if isinstance(data, str) and (key == "url" or key.endswith("_url")):
        return secrets.redact(data)
    return data


#: stage names in run order; the runner maps each to its function
#: the method's stages, what the demo runs; STAGES adds the clinician's path (align, decode), which needs
#: its own [align] / [decode] sections
METHOD_STAGES = ("ingest", "features", "regress", "reconstruct", "evaluate", "roi")
STAGES = ("glm", "ingest", "features", "regress", "align", "reconstruct", "evaluate", "roi", "decode")
