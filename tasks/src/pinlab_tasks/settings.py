"""PinlabSettings: defaults from the environment (PINLAB_*), overridden by CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# NumPy's legacy seeding (scikit-learn, implicit) takes at most 2**32 - 1; half of that leaves
# room for the offsets runs add to a seed (seed + r, seed + 1,000,003).
MAX_SEED = 2**31 - 1

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ProgressMode = Literal["auto", "rich", "json", "off"]


class PinlabSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINLAB_", extra="ignore")

    runs_dir: Path = Field(default=Path("runs"), description="Where new run directories go.")
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed for every random choice of a run."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512)
    log_level: LogLevel = "INFO"
    progress: ProgressMode = Field(
        default="auto",
        description="How long jobs report on stderr: auto (a bar on a terminal, plain lines "
        "elsewhere, silent under --json where a command was), rich (that even under --json), "
        "json (one ProgressEvent per line), off.",
    )
    debug: bool = Field(default=False, description="Show tracebacks instead of one-line errors.")
    tracking: bool = Field(default=True, description="Log runs to MLflow (PINLAB_TRACKING=off).")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default sqlite:///RUNS_DIR/mlflow.db, no server.",
    )
    experiment: str = Field(default="pinlab", description="MLflow experiment new runs go to.")

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.runs_dir.resolve() / 'mlflow.db'}"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
