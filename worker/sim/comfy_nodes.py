"""Node classes the simulated ComfyUI knows: their inputs, outputs and roles.

The table mirrors ``INPUT_TYPES``/``RETURN_TYPES`` of the real nodes closely enough for validation to
answer like ComfyUI 0.3.64 (required inputs, INT/FLOAT ranges, fixed choice lists, link types). Inputs
whose real choices come from model folders (``unet_name``, ``vae_name``...) are *open* choices here
(an empty list): the simulator has no model files, so any value is accepted. Custom-pack nodes list only
the inputs GmAnimato's workflows are known to send; anything extra in a prompt is ignored, as ComfyUI
ignores inputs a node does not declare.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
OPEN: list[str] = []  # an open choice list: not checked (model files, long or pack-specific lists)


def _int(default: int, lo: int | None = None, hi: int | None = None, step: int | None = None,
         **extra: object) -> tuple[str, dict]:
    """An INT input config in ComfyUI's key order (default, min, max, step)."""
    cfg: dict = {"default": default}
    for key, value in (("min", lo), ("max", hi), ("step", step)):
        if value is not None:
            cfg[key] = value
    cfg.update(extra)
    return ("INT", cfg)


def _float(default: float, lo: float | None = None, hi: float | None = None,
           step: float | None = None) -> tuple[str, dict]:
    """A FLOAT input config (default, min, max, step)."""
    cfg: dict = {"default": default}
    for key, value in (("min", lo), ("max", hi), ("step", step)):
        if value is not None:
            cfg[key] = value
    return ("FLOAT", cfg)


def _choice(options: list[str], **cfg: object) -> tuple[list[str], dict]:
    """A combo input; an empty list means the simulator accepts any value."""
    return (list(options), dict(cfg))


def _t(type_name: str, **cfg: object) -> tuple[str, dict]:
    """A plain typed input (IMAGE, MODEL, STRING...)."""
    return (type_name, dict(cfg))


@dataclass(frozen=True)
class NodeSpec:
    """What validation and execution need to know about one node class."""

    name: str
    required: dict[str, tuple] = field(default_factory=dict)
    optional: dict[str, tuple] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_node: bool = False
    sampler: bool = False
    custom_validated: frozenset[str] = frozenset()
    python_module: str = "nodes"
    category: str = "sim"

    def inputs(self) -> list[tuple[str, object, dict, str]]:
        """Every declared input as (name, type, config, "required"|"optional")."""
        found = [(n, t[0], t[1], "required") for n, t in self.required.items()]
        found += [(n, t[0], t[1], "optional") for n, t in self.optional.items()]
        return found


_WAN_I2V_REQUIRED = {
    "positive": _t("CONDITIONING"), "negative": _t("CONDITIONING"), "vae": _t("VAE"),
    "width": _int(832, 16, MAX_RESOLUTION, 16), "height": _int(480, 16, MAX_RESOLUTION, 16),
    "length": _int(81, 1, MAX_RESOLUTION, 4), "batch_size": _int(1, 1, 4096),
}
_WAN_OUTPUTS = ("CONDITIONING", "CONDITIONING", "LATENT")
_WAN_NAMES = ("positive", "negative", "latent")
_SAVE_HINT = ("The prefix for the file to save. This may include formatting information such as "
              "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")

_SPECS: list[NodeSpec] = [
    # ---- ComfyUI core, GmAnimato workflows
    NodeSpec("CLIPLoader", {"clip_name": _choice(OPEN), "type": _choice(OPEN)},
             {"device": _choice(["default", "cpu"], advanced=True)}, ("CLIP",), category="advanced/loaders"),
    NodeSpec("CLIPTextEncode", {"text": _t("STRING", multiline=True, dynamicPrompts=True),
                                "clip": _t("CLIP")}, outputs=("CONDITIONING",), category="conditioning"),
    NodeSpec("VAELoader", {"vae_name": _choice(OPEN)}, outputs=("VAE",), category="loaders"),
    NodeSpec("VAEDecode", {"samples": _t("LATENT"), "vae": _t("VAE")}, outputs=("IMAGE",), category="latent"),
    NodeSpec("LoadImage", {"image": _choice(OPEN, image_upload=True)}, outputs=("IMAGE", "MASK"),
             custom_validated=frozenset({"image"}), category="image"),
    NodeSpec("WanImageToVideo", dict(_WAN_I2V_REQUIRED),
             {"clip_vision_output": _t("CLIP_VISION_OUTPUT"), "start_image": _t("IMAGE")},
             _WAN_OUTPUTS, _WAN_NAMES, python_module="comfy_extras.nodes_wan", category="conditioning/video_models"),
    NodeSpec("WanFirstLastFrameToVideo", dict(_WAN_I2V_REQUIRED),
             {"clip_vision_start_image": _t("CLIP_VISION_OUTPUT"), "clip_vision_end_image": _t("CLIP_VISION_OUTPUT"),
              "start_image": _t("IMAGE"), "end_image": _t("IMAGE")},
             _WAN_OUTPUTS, _WAN_NAMES, python_module="comfy_extras.nodes_wan", category="conditioning/video_models"),
    NodeSpec("LoraLoaderModelOnly", {"model": _t("MODEL"), "lora_name": _choice(OPEN),
                                     "strength_model": _float(1.0, -100.0, 100.0, 0.01)},
             outputs=("MODEL",), category="loaders"),
    NodeSpec("UpscaleModelLoader", {"model_name": _choice(OPEN)}, outputs=("UPSCALE_MODEL",),
             python_module="comfy_extras.nodes_upscale_model", category="loaders"),
    NodeSpec("ImageUpscaleWithModel", {"upscale_model": _t("UPSCALE_MODEL"), "image": _t("IMAGE")},
             outputs=("IMAGE",), python_module="comfy_extras.nodes_upscale_model", category="image/upscaling"),
    NodeSpec("ImageScale", {"image": _t("IMAGE"), "upscale_method": _choice(UPSCALE_METHODS),
                            "width": _int(512, 0, MAX_RESOLUTION, 1), "height": _int(512, 0, MAX_RESOLUTION, 1),
                            "crop": _choice(["disabled", "center"])}, outputs=("IMAGE",), category="image/upscaling"),
    NodeSpec("EmptyHunyuanLatentVideo", {"width": _int(848, 16, MAX_RESOLUTION, 16),
                                         "height": _int(480, 16, MAX_RESOLUTION, 16),
                                         "length": _int(25, 1, MAX_RESOLUTION, 4), "batch_size": _int(1, 1, 4096)},
             outputs=("LATENT",), python_module="comfy_extras.nodes_hunyuan", category="latent/video"),
    NodeSpec("UNETLoader", {"unet_name": _choice(OPEN),
                            "weight_dtype": _choice(["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])},
             outputs=("MODEL",), category="advanced/loaders"),
    NodeSpec("KSampler", {"model": _t("MODEL"), "seed": _int(0, 0, MAX_SEED, control_after_generate=True),
                          "steps": _int(20, 1, 10000), "cfg": _float(8.0, 0.0, 100.0, 0.1),
                          "sampler_name": _choice(OPEN), "scheduler": _choice(OPEN),
                          "positive": _t("CONDITIONING"), "negative": _t("CONDITIONING"),
                          "latent_image": _t("LATENT"), "denoise": _float(1.0, 0.0, 1.0, 0.01)},
             outputs=("LATENT",), sampler=True, category="sampling"),
    # ---- ComfyUI core, the model-free nodes of the protocol captures
    NodeSpec("EmptyImage", {"width": _int(512, 1, MAX_RESOLUTION, 1), "height": _int(512, 1, MAX_RESOLUTION, 1),
                            "batch_size": _int(1, 1, 4096), "color": _int(0, 0, 0xFFFFFF, 1, display="color")},
             outputs=("IMAGE",), category="image"),
    NodeSpec("ImageInvert", {"image": _t("IMAGE")}, outputs=("IMAGE",), category="image"),
    NodeSpec("ImageBlur", {"image": _t("IMAGE"), "blur_radius": _int(1, 1, 31, 1),
                           "sigma": _float(1.0, 0.1, 10.0, 0.1)}, outputs=("IMAGE",),
             python_module="comfy_extras.nodes_post_processing", category="image/postprocessing"),
    NodeSpec("SaveImage", {"images": _t("IMAGE", tooltip="The images to save."),
                           "filename_prefix": _t("STRING", default="ComfyUI", tooltip=_SAVE_HINT)},
             output_node=True, category="image"),
    NodeSpec("PreviewImage", {"images": _t("IMAGE")}, output_node=True, category="image"),
    NodeSpec("SaveImageWebsocket", {"images": _t("IMAGE")}, output_node=True,
             python_module="custom_nodes.websocket_image_save", category="api/image"),
    NodeSpec("CreateVideo", {"images": _t("IMAGE", tooltip="The images to create a video from."),
                             "fps": _float(30.0, 1.0, 120.0, 1.0)}, {"audio": _t("AUDIO")}, ("VIDEO",),
             python_module="comfy_extras.nodes_video", category="image/video"),
    NodeSpec("SaveVideo", {"video": _t("VIDEO", tooltip="The video to save."),
                           "filename_prefix": _t("STRING", default="video/ComfyUI"),
                           "format": ("COMBO", {"default": "auto", "options": ["auto", "mp4"]}),
                           "codec": ("COMBO", {"default": "auto", "options": ["auto", "h264"]})},
             output_node=True, python_module="comfy_extras.nodes_video", category="image/video"),
    NodeSpec("SaveAnimatedWEBP", {"images": _t("IMAGE"), "filename_prefix": _t("STRING", default="ComfyUI"),
                                  "fps": _float(6.0, 0.01, 1000.0, 0.01), "lossless": _t("BOOLEAN", default=True),
                                  "quality": _int(80, 0, 100), "method": _choice(["default", "fastest", "slowest"])},
             output_node=True, python_module="comfy_extras.nodes_images", category="image/animation"),
    # ---- custom packs used by GmAnimato
    NodeSpec("VHS_VideoCombine", {"images": _t("IMAGE"), "frame_rate": _float(8.0, 1.0, None, 1.0),
                                  "loop_count": _int(0, 0, 100, 1),
                                  "filename_prefix": _t("STRING", default="AnimateDiff"),
                                  "format": _choice(OPEN), "pingpong": _t("BOOLEAN", default=False),
                                  "save_output": _t("BOOLEAN", default=True)},
             {"audio": _t("AUDIO"), "meta_batch": _t("VHS_BatchManager"), "vae": _t("VAE")},
             ("VHS_FILENAMES",), ("Filenames",), output_node=True,
             python_module="custom_nodes.ComfyUI-VideoHelperSuite", category="Video Helper Suite 🎥🅥🅗🅢"),
    NodeSpec("UnetLoaderGGUF", {"unet_name": _choice(OPEN)}, outputs=("MODEL",),
             python_module="custom_nodes.ComfyUI-GGUF", category="bootleg"),
    NodeSpec("UNETLoaderMultiGPU", {"unet_name": _choice(OPEN)},
             {"weight_dtype": _choice(OPEN), "device": _choice(OPEN)}, ("MODEL",),
             python_module="custom_nodes.ComfyUI-MultiGPU", category="multigpu"),
    NodeSpec("ImageResizeKJ", {"image": _t("IMAGE"), "width": _int(512, 0, MAX_RESOLUTION, 8),
                               "height": _int(512, 0, MAX_RESOLUTION, 8), "upscale_method": _choice(UPSCALE_METHODS),
                               "keep_proportion": _t("BOOLEAN", default=False),
                               "divisible_by": _int(2, 0, 512, 1)},
             {"get_image_size": _t("IMAGE"), "width_input": _t("INT"), "height_input": _t("INT"),
              "crop": _choice(OPEN)},
             ("IMAGE", "INT", "INT"), ("IMAGE", "width", "height"),
             python_module="custom_nodes.comfyui-kjnodes", category="KJNodes/image"),
    NodeSpec("ImageResizeKJv2", {"image": _t("IMAGE"), "width": _int(512, 0, MAX_RESOLUTION, 1),
                                 "height": _int(512, 0, MAX_RESOLUTION, 1), "upscale_method": _choice(UPSCALE_METHODS),
                                 "keep_proportion": _choice(OPEN), "pad_color": _t("STRING", default="0, 0, 0"),
                                 "crop_position": _choice(OPEN), "divisible_by": _int(2, 0, 512, 1)},
             {"mask": _t("MASK"), "device": _choice(OPEN)},
             ("IMAGE", "INT", "INT", "MASK"), ("IMAGE", "width", "height", "mask"),
             python_module="custom_nodes.comfyui-kjnodes", category="KJNodes/image"),
    NodeSpec("PathchSageAttentionKJ", {"model": _t("MODEL")}, {"sage_attention": _choice(OPEN)}, ("MODEL",),
             python_module="custom_nodes.comfyui-kjnodes", category="KJNodes/experimental"),
    NodeSpec("WanMoeKSampler", {"model_high_noise": _t("MODEL"), "model_low_noise": _t("MODEL"),
                                "boundary": _float(0.875, 0.0, 1.0, 0.001), "seed": _int(0, 0, MAX_SEED),
                                "steps": _int(20, 1, 10000), "cfg_high_noise": _float(8.0, 0.0, 100.0, 0.1),
                                "cfg_low_noise": _float(8.0, 0.0, 100.0, 0.1), "sampler_name": _choice(OPEN),
                                "scheduler": _choice(OPEN), "sigma_shift": _float(8.0, 0.0, 100.0, 0.01),
                                "positive": _t("CONDITIONING"), "negative": _t("CONDITIONING"),
                                "latent_image": _t("LATENT"), "denoise": _float(1.0, 0.0, 1.0, 0.01)},
             outputs=("LATENT",), sampler=True, python_module="custom_nodes.ComfyUI-WanMoeKSampler",
             category="sampling"),
    NodeSpec("TeaCache", {"model": _t("MODEL"), "model_type": _choice(OPEN),
                          "rel_l1_thresh": _float(0.4, 0.0, 10.0, 0.01), "start_percent": _float(0.0, 0.0, 1.0, 0.01),
                          "end_percent": _float(1.0, 0.0, 1.0, 0.01), "cache_device": _choice(OPEN)},
             outputs=("MODEL",), python_module="custom_nodes.ComfyUI-TeaCache", category="TeaCache"),
    NodeSpec("WanMotionScale", {"model": _t("MODEL")}, {"enabled": _t("BOOLEAN", default=True)}, ("MODEL",),
             python_module="custom_nodes.comfyui-longlook", category="longlook"),
    NodeSpec("WanFreeLong", {"model": _t("MODEL")}, {"enabled": _t("BOOLEAN", default=True)}, ("MODEL",),
             python_module="custom_nodes.comfyui-longlook", category="longlook"),
    NodeSpec("PromptRelayEncodeTimeline", {}, {}, ("*", "*", "*", "*"),
             python_module="custom_nodes.ComfyUI-PromptRelay", category="conditioning"),
]

NODE_SPECS: dict[str, NodeSpec] = {spec.name: spec for spec in _SPECS}


def known_nodes(disabled: list[str] | None = None) -> dict[str, NodeSpec]:
    """The node table of one server, without the classes named in ``disabled`` (``--disable-node``)."""
    gone = set(disabled or ())
    return {name: spec for name, spec in NODE_SPECS.items() if name not in gone}


def object_info(spec: NodeSpec, input_files: list[str]) -> dict:
    """``GET /object_info/<name>`` for one node (LoadImage lists ``input_files`` as its choices)."""
    def show(name: str, type_: object, cfg: dict) -> list:
        if spec.name == "LoadImage" and name == "image":
            return [list(input_files), cfg]
        return [type_, cfg] if cfg else [type_]

    sections = {"required": spec.required, "optional": spec.optional}
    inputs = {key: {n: show(n, t[0], t[1]) for n, t in section.items()}
              for key, section in sections.items() if section or key == "required"}
    return {spec.name: {
        "input": inputs,
        "input_order": {key: list(section) for key, section in inputs.items()},
        "output": list(spec.outputs), "output_is_list": [False] * len(spec.outputs),
        "output_name": list(spec.output_names or spec.outputs), "name": spec.name,
        "display_name": spec.name, "description": "", "python_module": spec.python_module,
        "category": spec.category, "output_node": spec.output_node,
    }}
