"""Readers and converters for the benchmark releases in their official layouts.

``releases`` reads DOCCI, DCI, Urban1k, ShareGPT4V, COCO and Flickr30k into
evaluation records. ``joint`` builds the global+local joint test gallery.
``classification`` reads CIFAR-10/100 and ImageNet-O. ``prepare`` is the
command line that writes the converted lists.
"""

from lavis_goal.data.releases import RELEASES, Release, read_release

__all__ = ["RELEASES", "Release", "read_release"]
