"""core.dicom."""
