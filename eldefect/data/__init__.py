"""Datasets: readers for Pascal VOC and ELPV layouts, and synthetic EL images."""
