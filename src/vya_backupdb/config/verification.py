"""The verification and cleanup sections of the configuration.

``verification`` says whether each new backup is checked right after it is written and how
deeply (docs/verification.md); ``cleanup`` whether the retention policy is applied after each
backup run (docs/retention.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vya_backupdb.config.base import FrozenModel

VerificationLevel = Literal["checksum", "integrity", "test-restore"]


class VerificationConfig(FrozenModel):
    auto_verify: bool = Field(
        False,
        description=(
            "Verify every backup right after it is written (like backup --verify); a backup "
            "that fails its verification counts as failed"
        ),
    )
    level: VerificationLevel = Field(
        "integrity",
        description=(
            "checksum (re-hash the object) | integrity (also decompress it and check the dump "
            "format) | test-restore (also restore it into a temporary database and compare "
            "row counts)"
        ),
    )
    scratch_instance: str | None = Field(
        None,
        description=(
            "Instance id where test restores run (same DBMS family), so production is never "
            "touched; default: the backup's own instance"
        ),
    )


class CleanupConfig(FrozenModel):
    after_backup: bool = Field(
        False,
        description=(
            "Apply the retention policy (vya-backupdb cleanup) to each instance after its "
            "backup run; a failing cleanup is logged and never fails the backup"
        ),
    )
