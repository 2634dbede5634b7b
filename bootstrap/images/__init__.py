"""Local container images for jobs, tests and the demo, built from Debian packages.

``python -m p2pmesh.bootstrap.images [busybox] [python] [--force]`` builds them from the shell;
other code calls ``ensure_images`` / ``image_exists``.
"""

from .build import IMAGES as IMAGES
from .build import debian_mirror as debian_mirror
from .build import ensure_images as ensure_images
from .build import image_exists as image_exists
from .build import image_tag as image_tag

__all__ = ["IMAGES", "debian_mirror", "ensure_images", "image_exists", "image_tag"]
