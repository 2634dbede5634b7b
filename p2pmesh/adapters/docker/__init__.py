"""Docker adapter: runs jobs in sandboxed containers on the local engine."""

from .executor import JOB_LABEL as JOB_LABEL
from .executor import ContainerOutcome as ContainerOutcome
from .executor import ContainerSpec as ContainerSpec
from .executor import DockerExecutor as DockerExecutor

__all__ = ["JOB_LABEL", "ContainerOutcome", "ContainerSpec", "DockerExecutor"]
