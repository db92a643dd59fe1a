"""MONAI Label app folder: ``monailabel start_server --app monai_bundle/monailabel_app ...``.

The app lives in the ``localdiffusion`` package (:mod:`localdiffusion.serving`); see its
docstring for the start command.
"""

from localdiffusion.serving.app import LocalDiffusionLabelApp
