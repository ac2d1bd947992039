"""CLIP features against direct transformers computations on the tiny config; preprocessing against PIL steps."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fmri2img.models import clip as C
from fmri2img.models import clip_extract as CX
from fmri2img.storage.weights import open_weights
from fmri2img.models.tokenizer import learn_merges, mini_nsd_words, tiny_clip_tokenizer
from fmri2img.models.weights import WeightsError

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return C.tiny_clip(seed=0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(11)
    base = rng.integers(0, 256, size=(3, 17, 17, 3)).repeat(25, axis=1).repeat(25, axis=2)  # 425², blocky
    return np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- preprocessing
def _reference_preprocess(img: np.ndarray) -> np.ndarray:
    """Brain-Diffuser's chain one step at a time (torchvision-style tensors, then processor-style PIL)."""
    from PIL import Image

    pil = Image.fromarray(img).resize((512, 512), resample=Image.BILINEAR)
    t = torch.tensor(np.array(pil)).permute(2, 0, 1).float().div(255)  # to_tensor
    t = t * 2 - 1                                                        # dataset: [-1, 1]
    t = (t + 1) / 2                                                      # clip_encode_vision
    hwc = t.permute(1, 2, 0).numpy()
    pil = Image.fromarray((hwc * 255).astype(np.uint8))                  # processor: to_pil_image
    w, h = pil.size
    if min(w, h) != 224:
        s = 224 / min(w, h)
        pil = pil.resize((224, int(h * s)) if w <= h else (int(w * s), 224), resample=Image.BICUBIC)
    w, h = pil.size
    top, left = (h - 224 + 1) // 2, (w - 224 + 1) // 2
    pil = pil.crop((left, top, left + 224, top + 224))
    arr = np.array(pil).astype(np.float32) / 255.0
    chans = [(arr[:, :, c] - np.float32(MEAN[c])) / np.float32(STD[c]) for c in range(3)]
    return np.stack(chans)


def test_preprocess_equals_stepwise_pil(images: np.ndarray) -> None:
    got = C.clip_vision_preprocess(images)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 3, 224, 224) and got.dtype == torch.float32
    ref = np.stack([_reference_preprocess(im) for im in images])
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=2e-6)


def test_preprocess_threads_do_not_change_the_result(images: np.ndarray) -> None:
    one = C.clip_vision_preprocess(images, workers=1)
    many = C.clip_vision_preprocess(images, workers=3)
    assert torch.equal(one, many)
    assert torch.equal(C._processor_steps(C.signed_512(images, workers=2), workers=2), one)


def test_preprocess_any_side_and_truncation_matters() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(1, 97, 61, 3), dtype=np.uint8)  # non-square, small
    got = C.clip_vision_preprocess(img).numpy()
    np.testing.assert_allclose(got[0], _reference_preprocess(img[0]), atol=2e-6)
    # the uint8 step truncates: rounding would give different pixels, so the test above can tell them apart
    signed = C.signed_512(img)
    unit = (signed + 1) / 2 * 255
    assert (unit.astype(np.uint8) != np.rint(unit).astype(np.uint8)).mean() > 0.1


def test_processor_steps_non_square_resize_and_crop() -> None:
    rng = np.random.default_rng(6)
    signed = rng.uniform(-1, 1, size=(1, 300, 400, 3)).astype(np.float32)
    from PIL import Image

    u8 = Image.fromarray(((signed[0] + 1) / 2 * 255).astype(np.uint8))
    u8 = u8.resize((298, 224), resample=Image.BICUBIC).crop((37, 0, 261, 224))  # short side 224, centred
    ref = (np.array(u8, np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(C._processor_steps(signed)[0].numpy(), ref.transpose(2, 0, 1), atol=2e-6)


# --------------------------------------------------------------------------- vision features
def test_vision_features_equal_direct_transformers(tiny, images: np.ndarray) -> None:
    model, _ = tiny
    px = C.clip_vision_preprocess(images[:2])
    got = C.clip_vision_features(model, px)
    assert got.shape == (2, 257, 32) and got.dtype == np.float32
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=px).last_hidden_state.detach().double().numpy()
        pooled = model.get_image_features(pixel_values=px).pooler_output.detach().double().numpy()  # proj(postLN(CLS))
    ln = model.vision_model.post_layernorm
    mu, var = hidden.mean(-1, keepdims=True), hidden.var(-1, keepdims=True)
    gamma, beta = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy()
    normed = (hidden - mu) / np.sqrt(var + ln.eps) * gamma + beta
    proj = normed @ model.visual_projection.weight.detach().double().numpy().T
    np.testing.assert_allclose(proj[:, 0], pooled, rtol=1e-5, atol=1e-6)
    ref = proj / np.linalg.norm(pooled, axis=-1)[:, None, None]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got[:, 0], axis=-1), 1.0, rtol=1e-5)


def test_vision_uncond_is_grey_127(tiny) -> None:
    model, _ = tiny
    grey = torch.empty(1, 3, 224, 224)
    for c in range(3):
        grey[0, c] = float((np.float32(127) / np.float32(255) - np.float32(MEAN[c])) / np.float32(STD[c]))
    ref = C.clip_vision_features(model, grey)[0]
    got = C.clip_vision_uncond(model)
    assert got.shape == (257, 32)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    zeros = C.clip_vision_features(model, torch.zeros(1, 3, 224, 224))[0]
    assert np.abs(got - zeros).max() > 1e-3  # not the raw zero tensor


# --------------------------------------------------------------------------- token reductions
def test_token_reductions() -> None:
    z = np.random.default_rng(0).normal(size=(2, 257, 5)).astype(np.float32)
    np.testing.assert_array_equal(CX.reduce_tokens(z, "all"), z)
    np.testing.assert_array_equal(CX.reduce_tokens(z, "first77"), z[:, :77])
    pooled = CX.reduce_tokens(z, "pooled", pool_grid=4)
    assert pooled.shape == (2, 17, 5)
    np.testing.assert_array_equal(pooled[:, 0], z[:, 0])
    for gy in range(4):
        for gx in range(4):
            idx = [1 + 16 * y + x for y in range(4 * gy, 4 * gy + 4) for x in range(4 * gx, 4 * gx + 4)]
            np.testing.assert_allclose(pooled[:, 1 + 4 * gy + gx], z[:, idx].mean(1), atol=1e-6)
    assert CX.reduce_tokens(z, "pooled", pool_grid=8).shape == (2, 65, 5)
    with pytest.raises(ValueError, match="pool_grid=3"):
        CX.reduce_tokens(z, "pooled", pool_grid=3)
    with pytest.raises(ValueError, match=r"tokens='top'.*first77"):
        CX.reduce_tokens(z, "top")


# --------------------------------------------------------------------------- text
def test_tokenizer_real_clip_conventions() -> None:
    tok = tiny_clip_tokenizer()
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2 == tok.eos_token_id - 1
    assert tok.pad_token_id == tok.eos_token_id and tok.model_max_length == 77
    ids = tok("A tabby cat, tinted RED", padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[7:] == [tok.eos_token_id] * 70
    assert tok.convert_ids_to_tokens(ids[1:7]) == ["a</w>", "tabby</w>", "cat</w>", ",</w>", "tinted</w>", "red</w>"]
    assert all(len(tok.tokenize(w)) == 1 for w in mini_nsd_words())
    assert tok.tokenize("zqxj") == ["z", "q", "x", "j</w>"]  # unknown words fall back to characters
    long = tok(" ".join(["cat"] * 100), truncation=True, max_length=77)["input_ids"]
    assert len(long) == 77 and long[-1] == tok.eos_token_id
    assert learn_merges(["ab", "abc"]) == learn_merges(["abc", "ab"])  # deterministic


def _reference_text(model, tok, row) -> np.ndarray:
    caps = [c for c in row if c != ""] or [""]
    W = model.text_projection.weight.detach().double().numpy()
    per = []
    for c in caps:  # one caption at a time, pooled token found by hand
        ids = tok(c, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model.text_model(input_ids=ids).last_hidden_state[0].detach().double().numpy()
        eos = ids[0].tolist().index(tok.eos_token_id)
        proj = h @ W.T
        per.append(proj / np.linalg.norm(proj[eos]))
    return np.mean(per, axis=0)


def test_text_features_equal_direct_transformers(tiny) -> None:
    model, tok = tiny
    caps = np.array([["a cat on a blanket", "a striped cat", "", "a red eye fundus", ""],
                     ["", "", "", "", ""],
                     ["a wall clock upside down, tinted blue", "xylophone 42!", "a", "the moon", "rows of coins"]])
    got = C.clip_text_features(model, tok, caps, batch_size=4)
    assert got.shape == (3, 77, 32) and got.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(got[i], _reference_text(model, tok, caps[i]), rtol=1e-4, atol=1e-5)
    # pooled token as transformers defines it (get_text_features)
    ids = tok(["a striped cat"], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pooled = model.get_text_features(input_ids=ids).pooler_output[0].detach().double().numpy()
    ref = _reference_text(model, tok, ["a striped cat"])
    eos = ids[0].tolist().index(tok.eos_token_id)
    np.testing.assert_allclose(ref[eos] * np.linalg.norm(pooled), pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], C.clip_text_uncond(model, tok), atol=1e-6)


def test_text_legacy_argmax_pooling_agrees(tiny) -> None:
    """Published ViT-L/14 configs say eos_token_id=2 (pool at argmax id); the tiny tokenizer keeps EOS largest."""
    model, tok = tiny
    caps = np.array([["a cat on a blanket", "the moon", "", "", ""]])
    first_eos = C.clip_text_features(model, tok, caps)
    model.text_model.eos_token_id = 2
    try:
        legacy = C.clip_text_features(model, tok, caps)
    finally:
        model.text_model.eos_token_id = model.config.text_config.eos_token_id
    np.testing.assert_allclose(legacy, first_eos, atol=1e-6)
    assert C.vit_l14_config().text_config.eos_token_id == 2


def test_text_bad_captions(tiny) -> None:
    model, tok = tiny
    with pytest.raises(ValueError, match=r"captions has shape \(3,\).*\(n, 5\)"):
        C.clip_text_features(model, tok, np.array(["a", "b", "c"]))


# --------------------------------------------------------------------------- extractors
def test_extractors_interface_batch_independent(images: np.ndarray) -> None:
    vis = CX.make_clip_vision_extractor(tiny=True, device="cpu", batch_size=2, tokens="first77")
    assert (vis.name, vis.input, vis.feature_shape, vis.feature_dims, vis.random_weights) == (
        "clip-vision", "images", (77, 32), ("token", "dim"), True)
    a = json.loads(json.dumps(vis.attrs()))
    assert a["token_reduction"] == "first77" and a["random_weights"] is True and "spatially biased" in \
        a["token_reduction_description"]
    full = vis.extract(images, np.array([3, 4, 5]), seed=0)
    assert full.shape == (3, 77, 32) and full.dtype == np.float32
    np.testing.assert_allclose(vis.extract(images[2:], np.array([5]), seed=9), full[2:], atol=1e-5)
    txt = CX.make_clip_text_extractor(tiny=True, device="cpu", batch_size=3)
    assert (txt.name, txt.input, txt.feature_shape, txt.feature_dims) == (
        "clip-text", "captions", (77, 32), ("token", "dim"))
    caps = np.array([["a cat", "a dog", "", "", ""], ["the moon", "", "", "", ""]])
    out = txt.extract(caps, np.array([0, 1]), seed=0)
    np.testing.assert_allclose(txt.extract(caps[1:], np.array([1]), seed=1), out[1:], atol=1e-5)
    json.dumps(txt.attrs())
    pooled = CX.make_clip_vision_extractor(tiny=True, device="cpu", tokens="pooled", pool_grid=8)
    assert pooled.feature_shape == (65, 32) and pooled.attrs()["pool_grid"] == 8


def test_extractor_bfloat16_close_to_float32(images: np.ndarray) -> None:
    f32 = CX.make_clip_vision_extractor(tiny=True, device="cpu").extract(images[:1], np.array([0]), 0)
    bf16 = CX.make_clip_vision_extractor(tiny=True, device="cpu", dtype="bf16").extract(images[:1], np.array([0]), 0)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def test_extractor_errors() -> None:
    with pytest.raises(WeightsError, match="weights.clip"):
        CX.make_clip_text_extractor()
    with pytest.raises(ValueError, match=r"dtype='half'.*float32"):
        CX.make_clip_vision_extractor(tiny=True, dtype="half")
    with pytest.raises(ValueError, match="tokens='some'"):
        CX.make_clip_vision_extractor(tiny=True, tokens="some")
    with pytest.raises(ValueError, match="pool_grid=5"):
        CX.make_clip_vision_extractor(tiny=True, tokens="pooled", pool_grid=5)
    with pytest.raises(ValueError, match="batch_size=0"):
        CX.make_clip_text_extractor(tiny=True, batch_size=0)
    vis = CX.make_clip_vision_extractor(tiny=True, device="cpu")
    with pytest.raises(ValueError, match=r"dtype float32.*uint8"):
        vis.extract(np.zeros((1, 8, 8, 3), np.float32), np.array([0]), 0)
    with pytest.raises(ValueError, match="one id per image"):
        vis.extract(np.zeros((1, 8, 8, 3), np.uint8), np.array([0, 1]), 0)


# --------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def saved_dir(tiny, tmp_path_factory) -> str:
    model, tok = tiny
    d = tmp_path_factory.mktemp("clip")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_load_clip_local_and_memory_url(tiny, saved_dir: str, images: np.ndarray) -> None:
    import fsspec

    model, tok = tiny
    want_v = C.clip_vision_features(model, C.clip_vision_preprocess(images[:1]))
    want_t = C.clip_text_uncond(model, tok)
    fs = fsspec.filesystem("memory")
    for name in os.listdir(saved_dir):
        fs.pipe(f"/clipdir/{name}", open(os.path.join(saved_dir, name), "rb").read())
    for url in (saved_dir, open_weights("memory://clipdir")):
        m2, t2 = C.load_clip(url, device="cpu")
        np.testing.assert_allclose(C.clip_vision_features(m2, C.clip_vision_preprocess(images[:1])), want_v,
                                   atol=1e-6)
        np.testing.assert_allclose(C.clip_text_uncond(m2, t2), want_t, atol=1e-6)
    ex = CX.make_clip_text_extractor(weights=open_weights("memory://clipdir"), device="cpu")
    assert ex.random_weights is False and ex.attrs()["weights"] == "clipdir"


def test_load_clip_clear_errors(saved_dir: str, tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        C.load_clip(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="transformers-format CLIP directory: config.json is missing"):
        C.load_clip(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(saved_dir):
        (bad / name).write_bytes(open(os.path.join(saved_dir, name), "rb").read())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["projection_dim"] = 16  # the checkpoint's projections are 32 wide
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="projection"):
        C.load_clip(str(bad))
    cfg["model_type"] = "siglip"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="model_type='siglip'"):
        C.load_clip(str(bad))


def test_vision_batches_equal_one_batch_at_a_time(tiny, images: np.ndarray) -> None:
    model, _ = tiny
    got = np.concatenate(list(C.clip_vision_batches(model, images, batch_size=2)))
    want = np.concatenate([C.clip_vision_features(model, C.clip_vision_preprocess(images[i:i + 2]))
                           for i in range(0, len(images), 2)])
    assert got.shape == (len(images), 257, 32)
    np.testing.assert_array_equal(got, want)
    assert list(C.clip_vision_batches(model, images[:0], batch_size=2)) == []
