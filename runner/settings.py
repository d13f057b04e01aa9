"""Everything the runner reads from its environment, and the one way it is read.

`EnvSettings.from_env(env)` is the runner's only settings loader (RunnerSettings here, the
depth server's ServeSettings in serve/config.py): an entry point (`run_local`, `run_in_pod`,
`runner serve`, a bench) calls it once and passes the result down; nothing below an entry point
reads the environment. The env names are `spatialforge.crds.constants`, which the operator uses
too. runner/README.md's env table is `env_table()` (a test keeps them equal).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from spatialforge.crds import constants as c

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def _env(*names: str) -> Any:
    return AliasChoices(*names) if len(names) > 1 else names[0]


class EnvSettings(BaseSettings):
    """Settings read from one environment mapping: that mapping and nothing else.

    A field is read from its `validation_alias` (the first of several that is set), else from
    `env_prefix` + its name, case-insensitively; empty values count as unset. pydantic-settings'
    own sources are switched off (only keyword arguments remain), so a test's or a local run's
    mapping is never mixed with `os.environ` or a `.env` file.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, use_attribute_docstrings=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def env_names(cls, field: str) -> list[str]:
        """The environment variables a field is read from, first match wins."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices):
            return [str(a) for a in alias.choices]
        if isinstance(alias, str):
            return [alias]
        return [f"{cls.model_config.get('env_prefix', '')}{field}".upper()]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Settings from `env` (default `os.environ`), then `overrides` by field name (None: not given).

        Raises pydantic's ValidationError for bad values and TypeError for an unknown override.
        """
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
        environ = {k.upper(): v for k, v in (os.environ if env is None else env).items() if v != ""}
        values: dict[str, Any] = {}
        for field in cls.model_fields:
            found = next((environ[n.upper()] for n in cls.env_names(field) if n.upper() in environ), None)
            if found is not None:
                values[field] = found
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class RunnerSettings(EnvSettings):
    """The runner's configuration (pod and local runs alike)."""

    kind: str | None = Field(default=None, validation_alias=c.ENV_RESOURCE_KIND)
    """In a pod: `DepthBatch` or `ReconstructionJob` (set by the operator)."""
    name: str | None = Field(default=None, validation_alias=c.ENV_RESOURCE_NAME)
    """In a pod: the resource's name (set by the operator)."""
    namespace: str | None = Field(default=None, validation_alias=c.ENV_RESOURCE_NAMESPACE)
    """In a pod: the resource's namespace (set by the operator)."""
    shard_index: int = Field(default=0, ge=0, validation_alias=c.ENV_SHARD_INDEX)
    """Shard index (Indexed Job); the shard count is `spec.parallelism`."""
    kubeconfig: str | None = Field(default=None, validation_alias=c.ENV_KUBECONFIG)
    """Kubeconfig file; unset: the pod's service account."""
    progress_interval: float = Field(default=1.0, gt=0, validation_alias=c.ENV_PROGRESS_INTERVAL)
    """Seconds between progress patches of the status."""
    termination_log: Path = Field(default=Path(DEFAULT_TERMINATION_LOG), validation_alias=c.ENV_TERMINATION_LOG)
    """Where the one-line reason of a failed run goes."""
    model_dir: str | None = Field(default=None, validation_alias=c.ENV_MODEL_DIR)
    """Folder (or `s3://` prefix) with one subfolder per checkpoint, e.g. `depth-anything-v2-small-relative/`; unset: the Hugging Face cache."""
    model_cache: Path | None = Field(default=None, validation_alias=c.ENV_MODEL_CACHE)
    """Where an `s3://` model dir is mirrored; unset: `~/.cache/spatialforge/models` (or the temp dir)."""
    hub_download: bool = Field(default=False, validation_alias=c.ENV_HUB_DOWNLOAD)
    """Allow downloads from the Hugging Face hub when no model dir is set; off: only the local cache is read."""
    research_mode: bool = Field(default=False, validation_alias=c.ENV_RESEARCH_MODE)
    """Allow the CC-BY-NC base/large checkpoints."""
    device: str = Field(default="auto", validation_alias=c.ENV_DEVICE)
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    fp16: bool = Field(default=True, validation_alias=c.ENV_FP16)
    """fp16 on CUDA (always fp32 on CPU); `0` turns it off."""
    depth_backend: str = Field(default="auto", validation_alias=c.ENV_DEPTH_BACKEND)
    """Depth network backend: `auto` or one of runner/models/backends.py's BACKENDS."""
    backend_cache: Path | None = Field(default=None, validation_alias=c.ENV_BACKEND_CACHE)
    """Where exported backend graphs are cached; unset: `_backends/` beside the weights when the model dir is a local folder that has or can take one, else in the model cache."""
    decode_slots: int = Field(default=2, ge=1, le=64, validation_alias=c.ENV_DECODE_SLOTS)
    """Images fetched and decoded at once; the peak memory grows with it (runner/README.md)."""
    s3_endpoint: str | None = Field(
        default=None, validation_alias=_env(c.ENV_S3_ENDPOINT, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    """Object-store endpoint, the first one set; unset: AWS."""
    s3_region: str = Field(default="us-east-1", validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION"))
    """Object-store region (`AWS_REGION`, else `AWS_DEFAULT_REGION`)."""
    s3_access_key: str | None = Field(default=None, repr=False, validation_alias="AWS_ACCESS_KEY_ID")
    """Access key; else the secret dir, else boto3's chain (IRSA, instance profile)."""
    s3_secret_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")
    """Secret key, as above."""
    s3_secret_dir: Path | None = Field(default=None, validation_alias=c.ENV_S3_SECRET_DIR)
    """Mounted secret folder with files `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (or `accesskey`/`secretkey`); wins over the variables."""
    s3_retry_mode: str = Field(default="adaptive", validation_alias=c.ENV_S3_RETRY_MODE)
    """botocore retry mode."""
    s3_object_tagging: str = Field(default=f"{c.RETENTION_TAG}={c.RETENTION_RESULT}",
                                   validation_alias=c.ENV_S3_OBJECT_TAGGING)
    """Tags (URL-encoded `k=v&k2=v2`) on every object written: the results retention rule expires outputs by them."""


def env_names(field: str) -> list[str]:
    """The environment variables a RunnerSettings field is read from, first match wins."""
    return RunnerSettings.env_names(field)


def env_table() -> str:
    """runner/README.md's env table, generated from the fields above."""
    rows = ["| env | default | meaning |", "|---|---|---|"]
    for name, info in RunnerSettings.model_fields.items():
        default = info.default
        shown = "" if default is None else (str(default).lower() if isinstance(default, bool) else str(default))
        names = ", ".join(f"`{n}`" for n in env_names(name))
        rows.append(f"| {names} | {f'`{shown}`' if shown else ''} | {' '.join((info.description or '').split())} |")
    return "\n".join(rows)


def termination_path(env: Mapping[str, str] | None = None) -> str:
    """Where the termination message goes, even when the rest of the environment is invalid."""
    environ = os.environ if env is None else env
    return environ.get(c.ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG
