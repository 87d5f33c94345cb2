import numpy as np
import plotly.graph_objects as go
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from mnist_core.draw import MAX_IMAGE_BYTES, EmptyDrawing, ImageError, TooSmall, load_image, predict
from mnist_core.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError
from views.common import DIGIT_AXIS, SESSION_UPLOAD_BYTES, load_model, model_choices, try_load

st.title("Draw")
st.caption("Draw a digit with the mouse (or a finger). It is cropped, scaled to 20x20 and centred by its "
           "centre of mass in 28x28, the way MNIST digits were made, before the model reads it.")

choices = model_choices()
choices.update(st.session_state.get("draw_uploads", {}))  # checkpoints uploaded below: label -> bytes
if not choices:
    st.error("No model available: the bundled checkpoint is missing and no run has finished yet.")
    st.stop()

if "canvas_n" not in st.session_state:
    st.session_state.canvas_n = 0

left, right = st.columns([1, 1], gap="large")
with left:
    label = st.selectbox("Model", list(choices), key="draw_model")

    def take_upload():
        """Check an uploaded checkpoint (never executing it); a good one becomes the chosen model."""
        f = st.session_state.draw_upload
        st.session_state.draw_upload_error = None
        if f is None:
            return
        try:
            _, meta = load_model(f.getvalue())
        except CheckpointError as e:
            st.session_state.draw_upload_error = f"{f.name}: {str(e).removeprefix('uploaded file: ')}"
            return
        name = f"uploaded {f.name} ({meta['model_config'].describe()})"
        uploads = st.session_state.setdefault("draw_uploads", {})
        uploads.pop(name, None)
        uploads[name] = f.getvalue()
        while sum(map(len, uploads.values())) > SESSION_UPLOAD_BYTES and len(uploads) > 1:
            uploads.pop(next(iter(uploads)))  # a session's memory stays bounded in bytes, oldest first
        st.session_state.draw_model = name

    st.file_uploader("Or upload a checkpoint (.pt)", type=["pt"], key="draw_upload", on_change=take_upload,
                     max_upload_size=max(1, MAX_CHECKPOINT_BYTES // 2**20),
                     help="an mnist-lab checkpoint, such as a best.pt downloaded from Runs; it is checked, "
                          "and never run as code")
    if st.session_state.get("draw_upload_error"):
        st.error(st.session_state.draw_upload_error, icon="🚫")
    stroke = st.slider("Stroke width", 5, 40, 20, key="draw_stroke")
    result = st_canvas(
        stroke_width=stroke, stroke_color="#FFFFFF", background_color="#000000",
        height=280, width=280, drawing_mode="freedraw", return_image_data=True,
        key=f"canvas_{st.session_state.canvas_n}",
    )
    if st.button("Clear"):
        st.session_state.canvas_n += 1  # a new key gives a fresh, empty canvas
        st.rerun()
    photo = st.file_uploader(
        "Or a photo of a digit on paper", type=["png", "jpg", "jpeg", "bmp", "webp"], key="draw_photo",
        max_upload_size=MAX_IMAGE_BYTES // 2**20,
        help="a scan or a phone photo of one handwritten digit, dark on light or light on dark; it goes "
             "through the same steps as a drawing (remove the photo to draw again)")

model, meta = try_load(choices[label])
with right:
    image = None if result is None else result.image_data
    if model is None:
        st.stop()
    if photo is not None:
        try:
            image = load_image(photo.getvalue(), photo.name)
        except ImageError as e:
            st.error(str(e), icon="🚫")
            st.stop()
        st.caption(f"Reading the photo **{photo.name}** (remove it to draw instead).")
    if image is None:
        st.info("Draw a digit on the black square.", icon="✏️")
        st.stop()
    try:
        digit, probs, pre = predict(model, np.asarray(image))
    except TooSmall as e:
        st.info("That is too small to read as a digit: draw it larger, across much of the square." if photo is None
                else f"{photo.name}: {e}", icon="✏️")
        st.stop()
    except EmptyDrawing as e:
        st.info("Draw a digit on the black square." if photo is None else
                f"No digit in {photo.name}: {e}. Try a closer photo of one digit.", icon="✏️")
        st.stop()
    st.subheader(f"Prediction: {digit}")
    st.markdown(f"Confidence **{100 * probs[digit]:.1f}%**")
    fig = go.Figure(go.Bar(x=[str(d) for d in range(10)], y=probs * 100,
                           marker_color=["#2f6fdf" if d == digit else "#9bb7e8" for d in range(10)]))
    fig.update_layout(title="Probability of each digit (%)", yaxis_range=[0, 100], height=280,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=DIGIT_AXIS)
    st.plotly_chart(fig, key="probs")
    st.markdown("**What the model sees** (28x28, after preprocessing)")
    st.image((pre.final * 255).astype(np.uint8), width=168, clamp=True)

st.divider()
from views import draw_insight  # noqa: E402  (the lower half: only with a drawing to explain)

draw_insight.render(model, pre, digit, choices)
