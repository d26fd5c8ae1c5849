"""SongUNet: the DDPM++ / NCSN++ backbone of EDM's CIFAR-10, FFHQ and AFHQv2 teachers.

Clean-room; parameter names match NVlabs/edm `training/networks.py::SongUNet` (anchors B.3).
DDPM++: positional embedding, standard encoder/decoder, resample filter [1,1].
NCSN++: Fourier embedding, residual encoder, resample filter [1,3,3,1], channel_mult_noise 2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock


class SongUNet(torch.nn.Module):
    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.10,
        label_dropout=0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ):
        for key, value, allowed in (
            ("embedding_type", embedding_type, ("fourier", "positional")),
            ("encoder_type", encoder_type, ("standard", "skip", "residual")),
            ("decoder_type", decoder_type, ("standard", "skip")),
        ):
            if value not in allowed:
                raise ValueError(f"SongUNet: '{key}' is {value!r}; choose one of {', '.join(allowed)}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )  # fmt: skip

        # Mapping of noise level, class label and augmentation label to the block embedding.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, 0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True, **init
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]
        self.bottleneck_channels = cout

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None, return_features=False):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # EDM swaps to [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        features = x

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return (aux, features) if return_features else aux
