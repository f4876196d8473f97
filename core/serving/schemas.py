"""The shapes of the API's answers as pydantic models: FastAPI validates them and publishes them in the OpenAPI page."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["Preprocessing", "Prediction", "Heatmap", "Explanation", "Health", "ErrorAnswer", "ModelSummary"]


class Preprocessing(BaseModel):
    image_path: str = Field(description="the function every consumer of a run turns a film into the model's input with")
    image_size: int = Field(description="the run's data.image_size: the model's input is image_size² px")
    resize_mode: str = Field(description="the run's data.resize_mode: stretch, letterbox or center_square")
    color: str
    field_of_view: str = Field("full", description="the run's data.field_of_view: full, or body (cropped to the body)")
    remove_markers: bool = Field(False, description="the run's data.remove_markers: burnt-in markers inpainted")
    intensity: str = Field("none", description="the run's data.intensity: none, clahe or window")
    notes: list[str] | None = Field(
        None, description="what the run's preprocessing did to this film (only when the run has preprocessing)")


class Prediction(BaseModel):
    probability: float = Field(description="P(PNEUMONIA) from the run's model, 0..1")
    call: Literal["NORMAL", "PNEUMONIA"] = Field(description="PNEUMONIA when probability ≥ threshold")
    threshold: float
    threshold_source: str = Field(description='"validation" (the run\'s own) or "site:<name>" (a site profile)')
    threshold_label: str = Field(description="where the threshold comes from, in one sentence")
    calibrated_probability: float | None = Field(
        None, description="the probability on the site profile's scale (temperature scaling), when it has one")
    run_id: str
    model_sha256: str = Field(description="sha256 of the run's model.keras: which weights answered")
    preprocessing: Preprocessing
    notice: str


class Heatmap(BaseModel):
    method: Literal["gradcam", "gradcam++", "scorecam"]
    layer: str = Field(description="the convolutional layer the map is computed on")
    explained: Literal["pneumonia", "normal"] = Field(description="the class the map argues for: the one called")
    opacity: float
    media_type: Literal["image/png"] = "image/png"
    png_base64: str = Field(description="the heatmap blended over the model's input (image_size² px), PNG, base64")


class Explanation(Prediction):
    heatmap: Heatmap


class BatchFigures(BaseModel):
    batches: int
    films: int
    largest: int
    mean: float | None


class Health(BaseModel):
    status: Literal["ready"]
    run_id: str
    model_sha256: str
    in_flight: int = Field(description="predict and explain requests admitted now")
    max_concurrent: int
    batch_max: int
    batches: BatchFigures


class ErrorDetail(BaseModel):
    code: str = Field(description="stable: see docs/serving.md for the list")
    message: str = Field(description="one sentence for a person")


class ErrorAnswer(BaseModel):
    error: ErrorDetail


class ModelSummary(BaseModel):
    model_config = {"extra": "allow"}

    run_id: str
    name: str | None
    backbone: dict[str, Any]
    input: dict[str, Any]
    operating_point: dict[str, Any]
    test_evaluation: dict[str, Any] | None
    intended_use: str
    notice: str
