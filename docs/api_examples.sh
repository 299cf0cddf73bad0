#!/usr/bin/env bash
# The REST API's curl examples (docs/api.md shows this file; tests/serving/test_api_curl.py runs it against a
# real uvicorn + Triton, so the documentation cannot drift from the API).
#
#   mri-api examples --out examples/                  # the small example files used below
#   export MRI_API_TOKEN=...                          # a token the server accepts (MRI_API_TOKENS on the server)
#   API=http://127.0.0.1:8080 bash docs/api_examples.sh
set -euo pipefail
API=${API:-http://127.0.0.1:8080}
EX=${EX:-examples}
OUT=${OUT:-out}
AUTH="Authorization: Bearer ${MRI_API_TOKEN:?set MRI_API_TOKEN to an API token}"
mkdir -p "$OUT"

# --- operations -------------------------------------------------------------------------------------------
curl -sS --fail-with-body "$API/health/live"                                   # liveness (no token)
curl -sS --fail-with-body "$API/health/ready"                                  # Triton + models ready (no token)
curl -sS --fail-with-body -H "$AUTH" "$API/v1/models" -o "$OUT/models.json"    # models, versions, model cards
curl -sS --fail-with-body -H "$AUTH" "$API/v1/models/recon_unrolled" -o "$OUT/recon_unrolled.json"
curl -sS --fail-with-body -H "$AUTH" "$API/metrics" -o "$OUT/metrics.txt"       # Prometheus text format

# --- reconstruction: k-space in, images out ----------------------------------------------------------------
# .npy complex64 [slices, coils, ky, kx] as the raw body; the mask is inferred from the sampled lines
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace.npy" "$API/v1/reconstruct" -o "$OUT/recon.npy"
# .npz with kspace + mask (+ maps); answer as NIfTI
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace.npz" "$API/v1/reconstruct?format=nifti" \
     -o "$OUT/recon.nii"
# multipart upload: k-space and a separate mask; answer chosen with the Accept header (PNG preview)
curl -sS --fail-with-body -H "$AUTH" -H "Accept: image/png" -F file=@"$EX/kspace.npy" -F mask=@"$EX/mask.npy" \
     "$API/v1/reconstruct" -o "$OUT/recon.png"
# fastMRI HDF5 (/kspace, /mask) -> a DICOM series (zip of MR Image Storage instances)
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace_fastmri.h5" "$API/v1/reconstruct?format=dicom" \
     -o "$OUT/recon_fastmri_dicom.zip"
# ISMRMRD/MRD HDF5 (Gadgetron, vendor research interfaces) -> DICOM as multipart/related (DICOMweb style)
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace_mrd.h5" \
     -H 'Accept: multipart/related; type="application/dicom"' "$API/v1/reconstruct" -o "$OUT/recon_mrd.multipart"
# DICOM Raw Data instances with k-space (zip) -> derived DICOM series of the same patient and study
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace_dicom.zip" "$API/v1/reconstruct?format=dicom" \
     -o "$OUT/recon_rawdata_dicom.zip"

# --- synthesis: a source-contrast series in, the target contrast out ---------------------------------------
# T1w DICOM series (zip) -> synthetic T2w DICOM series (same patient/study/geometry, DERIVED, new series UID)
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/t1w_series.zip" "$API/v1/synthesize?target=T2w" \
     -o "$OUT/synth_t2w_dicom.zip"
# NIfTI in, NIfTI out (the source contrast cannot be read from a NIfTI file: say it)
curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/t1w.nii.gz" "$API/v1/synthesize?source=T1w&target=T2w" \
     -o "$OUT/synth_t2w.nii"

# --- job mode: large volumes (202 + job URL, poll, download) -----------------------------------------------
job=$(curl -sS --fail-with-body -H "$AUTH" --data-binary @"$EX/kspace_job.npy" \
      "$API/v1/jobs/reconstruct?format=npy")
id=$(echo "$job" | sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
status=queued
for _ in $(seq 1 600); do
  status=$(curl -sS --fail-with-body -H "$AUTH" "$API/v1/jobs/$id" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
  [ "$status" = succeeded ] || [ "$status" = failed ] && break
  sleep 1
done
echo "job $id: $status"
curl -sS --fail-with-body -H "$AUTH" "$API/v1/jobs/$id/result" -o "$OUT/job_recon.npy"
curl -sS --fail-with-body -H "$AUTH" -X DELETE "$API/v1/jobs/$id"
