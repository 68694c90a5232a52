"""Parameter shapes of common networks, written out here (no torchvision needed).

Each function returns the ``named_parameters()`` shapes of the torchvision model of that name, in
order: ResNet-18 (62 tensors, 11,689,512 elements), ResNet-50 (161 tensors, 25,557,032) and
ViT-B/16 (152 tensors, 86,567,656).
"""

from __future__ import annotations


def _bn(c: int) -> list[tuple[int, ...]]:
    return [(c,), (c,)]


def resnet(blocks: list[int], bottleneck: bool) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), *_bn(64)]
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        for b in range(n):
            if bottleneck:
                shapes += [(planes, inplanes, 1, 1), *_bn(planes), (planes, planes, 3, 3), *_bn(planes),
                           (planes * 4, planes, 1, 1), *_bn(planes * 4)]
            else:
                shapes += [(planes, inplanes, 3, 3), *_bn(planes), (planes, planes, 3, 3), *_bn(planes)]
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                shapes += [(planes * expansion, inplanes, 1, 1), *_bn(planes * expansion)]
            inplanes = planes * expansion
    shapes += [(1000, 512 * expansion), (1000,)]
    return shapes


def resnet18() -> list[tuple[int, ...]]:
    return resnet([2, 2, 2, 2], bottleneck=False)


def resnet50() -> list[tuple[int, ...]]:
    return resnet([3, 4, 6, 3], bottleneck=True)


def vit_b_16() -> list[tuple[int, ...]]:
    d, mlp = 768, 3072
    shapes: list[tuple[int, ...]] = [(1, 1, d), (d, 3, 16, 16), (d,), (1, 197, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (mlp, d), (mlp,), (d, mlp), (d,)]
    shapes += [(d,), (d,), (1000, d), (1000,)]
    return shapes


MODELS = {"resnet18": resnet18, "resnet50": resnet50, "vit_b_16": vit_b_16}
