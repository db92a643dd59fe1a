"""MONAI Label serving: an app with five inference tasks over the ``localdiffusion`` core.

* ``local_diffusion`` (type ``others``): the main job (:func:`~localdiffusion.jobs.run.compute_job`);
* ``ood_map`` (type ``others``): the calibrated PatchCore OOD probability;
* ``ood_segmentation`` (type ``segmentation``): the OOD region as label 1;
* ``tumour_segmentation`` (type ``segmentation``, BraTS labels 1, 2, 4);
* ``risk_segmentation`` (type ``segmentation``): the risk map's flagged regions as label 1, the region report
  in the answer.

Start it (optional extra ``label``, see the README) with::

    monailabel start_server --app monai_bundle/monailabel_app --studies <folder> \\
        --host 127.0.0.1 --port 8000 --uvicorn_app localdiffusion.serving.server:app

``--uvicorn_app`` serves MONAI Label's own FastAPI app with client errors answered as 4xx
(:mod:`localdiffusion.serving.server`); models come from ``--conf models_root DIR`` (default:
the shipped ``monai_bundle/models``), offline.
"""
