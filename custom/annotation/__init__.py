"""The label audit for an annotator: review order (:mod:`.audit_queue`), the MONAI Label app that serves it
(:mod:`.monailabel_app`, copied into an app folder, not imported here) and reviewed labels back into a datalist
(:mod:`.reviewed_labels`). See docs/deploy.md."""
