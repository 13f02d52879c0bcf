"""Request and response shapes of the API: they validate requests and write the OpenAPI document."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from flask_openapi3 import FileStorage
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError
from werkzeug.datastructures import FileStorage as WerkzeugFile

from emoreact.results import NEIGHBOUR, PREDICTION

SQLITE_MAX_ID = 2**63 - 1  # ids are SQLite integers; a larger one can name no image


def _must_be_file(value):
    # flask-openapi3 lets a plain text field of the same name through; only an uploaded file will do.
    if not isinstance(value, WerkzeugFile):
        raise ValueError("must be an uploaded file, not a text field")
    return value


Upload = Annotated[FileStorage, AfterValidator(_must_be_file)]


def _written_in_digits(value):
    # flask-openapi3 reads form fields as JSON and pydantic converts leniently: without this check
    # k=true would mean 1, k=1e1 10 and k=1_0 10. A number is written in digits, or refused.
    if isinstance(value, (bool, float)) or (isinstance(value, str) and not _INTEGER.fullmatch(value)):
        raise PydanticCustomError("int_digits", "Input should be an integer written in digits, like 5")
    return value


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
Whole = Annotated[int, BeforeValidator(_written_in_digits)]
# flask-openapi3 hands a form's text fields over JSON-decoded where they parse ("0" as 0, "null" as None): a
# caption is any text, so whatever it became is accepted here, and the view reads the text as sent
# (`request.form.getlist("caption")`).
CaptionText = Annotated[str, BeforeValidator(lambda value: value if isinstance(value, str) else repr(value))]


class ErrorBody(BaseModel):
    """Every error answer: one sentence saying what went wrong and how to fix it."""

    error: str = Field(description="what went wrong, in plain words", examples=["the file is not an image"])


class ImageForm(BaseModel):
    """A multipart upload of one or more images."""

    image: list[Upload] = Field(description="one or more image files (JPEG, PNG, WebP or GIF) or clips (animated GIF, WebP or PNG; MP4, MOV "
                                                 "or WebM with the video extra), "
                                                 "each in its own part named 'image'")
    caption: list[CaptionText] = Field([], description="the caption posted with each image, in the order of "
                                                        "the images: none at all, or one part named 'caption' "
                                                        "per image (an empty one for an image without)")
    k: Whole | None = Field(None, ge=0, description="neighbours per image (default: the server's)")


class OneImageForm(BaseModel):
    """A multipart upload of exactly one image."""

    image: Upload = Field(description="one image file (JPEG, PNG, WebP or GIF) or clip (its pooled frames)")
    k: Whole | None = Field(None, ge=1, description="neighbours to return (default: the server's)")


class KQuery(BaseModel):
    k: Whole | None = Field(None, ge=0, description="neighbours per image; the form field wins if both are sent")


class NeighboursQuery(BaseModel):
    id: Whole = Field(ge=0, le=SQLITE_MAX_ID, description="id of an indexed image (from a neighbours list)")
    k: Whole | None = Field(None, ge=1, description="neighbours to return (default: the server's)")


class ImagePath(BaseModel):
    image_id: int = Field(ge=0, le=SQLITE_MAX_ID, description="id of an indexed image")


# The result records are defined once, in emoreact.results; these are their pydantic models.
Neighbour = NEIGHBOUR.model()
Prediction = PREDICTION.model()


class FileError(BaseModel):
    """A file of the upload that could not be used; the other files are still answered."""

    image: str
    filename: str
    error: str
    kind: Literal["invalid", "unsupported", "too_large"]
    status: int = Field(description="the HTTP status this file alone would have got: 400, 415 or 413")


class PredictResponse(BaseModel):
    results: list[Prediction | FileError] = Field(description="one object per uploaded file, in upload order")


class FailedUpload(ErrorBody):
    """The upload was refused, or none of its files could be used."""

    results: list[FileError] | None = Field(None, description="per-file errors, when files were received "
                                                                 "but none could be used")


class NeighboursResponse(BaseModel):
    id: int | None = Field(None, description="the query image's id (GET)")
    image: str | None = Field(None, description="the uploaded file's name (POST)")
    neighbours: list[Neighbour]


class LabelPolicy(BaseModel):
    name: str
    allowed: list[str] = Field(description="emojis that fit an image with this label")
    blocked: list[str] = Field(description="emojis never offered when this label is predicted")
    threshold: float = Field(description="score at which the label is predicted")


class LabelsResponse(BaseModel):
    model_id: str
    head: str = Field(description="head kind: linear, mlp or zeroshot")
    rule: str
    labels: list[LabelPolicy]


class LastReload(BaseModel):
    """The latest reload (SIGHUP); the reason for a failure is in the server's log."""

    ok: bool = Field(description="false: the new store or head did not load, the previous ones still serve")
    at: str = Field(description="when it finished, ISO 8601 UTC")


class Health(BaseModel):
    status: Literal["ok"]
    model_id: str
    index_size: int = Field(description="images in the embedding store")
    device: str
    head: str
    labels: list[str]
    max_upload_bytes: int
    max_files: int
    k_default: int
    last_reload: LastReload | None = Field(None, description="null until the server has been asked to reload")
    unsure_above: float = Field(description="novelty at which a result is flagged unsure")
    novelty_calibration: dict | None = Field(description="the store's nearest-neighbour similarities that novelty "
                                                         "is measured against (sample, p1, median, p99)")
    keys_required_for_read: bool
    feedback_count: int | None = Field(description="corrections stored beside the served store (null: unreadable)")
    last_retrain: RetrainOutcome | None = Field(None, description="null until a retrain has finished")


# ---- feedback -----------------------------------------------------------------------------

Labels = Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=64)]
Note = Annotated[str | None, Field(None, max_length=2000, description="why, in the moderator's words")]


class FeedbackJson(BaseModel):
    """JSON {"id": N, "labels": ["sad"], "note": "..."} for an indexed image."""

    model_config = {"extra": "forbid"}
    id: int = Field(ge=0, le=SQLITE_MAX_ID, strict=True, description="id of an indexed image")  # not true/1.0
    labels: Labels = Field(description="the right labels, from /api/labels")
    note: Note = None


class FeedbackForm(BaseModel):
    """multipart/form-data with one 'image' file and 'labels' (comma-separated) for a new image."""

    image: Upload = Field(description="the image (JPEG, PNG, WebP or GIF) or clip; it is added to the store")
    labels: str = Field(min_length=1, max_length=2000, description="the right labels, comma-separated")
    note: Note = None


def _iso_time(value):
    # pydantic would also take a number as seconds since 1970; the document promises an ISO 8601 time.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
    raise PydanticCustomError("iso_time", "Input should be an ISO 8601 time, like 2026-01-31T12:00:00Z")


IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]


class FeedbackQuery(BaseModel):
    since: IsoTime | None = Field(None, description="ISO 8601 time; only corrections recorded after it "
                                                    "(no zone: UTC)")
    limit: Whole = Field(100, ge=1, le=1000, description="most corrections to return, oldest first")


class FeedbackEntry(BaseModel):
    """One stored correction."""

    id: int
    time: str = Field(description="when it was recorded, ISO 8601 UTC")
    key_name: str = Field(description="the name of the API key that sent it")
    image_id: int = Field(description="the image's id in the store (an upload's new id)")
    sha256: str
    labels: list[str] = Field(description="the corrected labels")
    note: str | None
    predicted: list[str] = Field(description="the labels the served head predicted at the time")
    head_id: str | None = Field(description="content hash of the head that served then")
    source: Literal["indexed", "upload"]


class FeedbackList(BaseModel):
    feedback: list[FeedbackEntry]


# ---- retraining ---------------------------------------------------------------------------

class HeadScores(BaseModel):
    """One head's macro-F1 on the store's validation and test splits (null: the split is empty)."""

    head: str = Field(description="the head's folder")
    val_macro_f1: float | None
    test_macro_f1: float | None


class RetrainOutcome(BaseModel):
    """How a retrain ended."""

    outcome: Literal["swapped", "kept", "failed"] = Field(
        description="swapped: the new head serves now; kept: it was worse on validation and is only on disk; "
                    "failed: training or evaluation failed (see message)")
    message: str
    started: str
    finished: str
    seconds: float
    feedback_overrides: int = Field(description="labels the corrections overrode in training")
    served: HeadScores | None = Field(description="the head that served when the retrain started")
    new: HeadScores | None = Field(description="the retrained head (null if training failed)")


class RetrainStatus(BaseModel):
    running: bool
    started: str | None = Field(description="when the running retrain started")
    last: RetrainOutcome | None = Field(description="the last finished retrain")


Health.model_rebuild()  # it names RetrainOutcome, defined after it
