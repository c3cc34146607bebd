"""The colormaps of `color_scale`, evaluated as micromegas evaluates them (the `colorous` crate): viridis,
inferno, magma and plasma are 256-color ramps sampled with a uniform cubic B-spline; turbo and cividis
are polynomial approximations. Arithmetic is in float32 and channels truncate to bytes, as there.

The ramps are matplotlib's perceptually uniform colormaps (public domain, by Nathaniel J. Smith, Stefan
van der Walt and Eric Firing) quantized to 8 bits: 256 colors of 6 hex digits each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Gradient = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
RECOGNIZED = ("viridis", "magma", "plasma", "inferno", "cividis", "turbo")
F32 = np.float32

VIRIDIS = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)

INFERNO = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)

MAGMA = (
    "00000401000501010601010802010902020b02020d03030f03031204041405041606051806051a07061c08071e090720"
    "0a08220b09240c09260d0a290e0b2b100b2d110c2f120d31130d34140e36150e38160f3b180f3d19103f1a10421c1044"
    "1d11471e114920114b21114e22115024125325125527125829115a2a115c2c115f2d11612f1163311165331067341069"
    "36106b38106c390f6e3b0f703d0f713f0f72400f74420f75440f764510774710784910784a10794c117a4e117b4f127b"
    "51127c52137c54137d56147d57157e59157e5a167e5c167f5d177f5f187f601880621980641a80651a80671b80681c81"
    "6a1c816b1d816d1d816e1e81701f81721f817320817521817621817822817922827b23827c23827e2482802582812581"
    "8326818426818627818827818928818b29818c29818e2a81902a81912b81932b80942c80962c80982d80992d809b2e7f"
    "9c2e7f9e2f7fa02f7fa1307ea3307ea5317ea6317da8327daa337dab337cad347cae347bb0357bb2357bb3367ab5367a"
    "b73779b83779ba3878bc3978bd3977bf3a77c03a76c23b75c43c75c53c74c73d73c83e73ca3e72cc3f71cd4071cf4070"
    "d0416fd2426fd3436ed5446dd6456cd8456cd9466bdb476adc4869de4968df4a68e04c67e24d66e34e65e44f64e55064"
    "e75263e85362e95462ea5661eb5760ec5860ed5a5fee5b5eef5d5ef05f5ef1605df2625df2645cf3655cf4675cf4695c"
    "f56b5cf66c5cf66e5cf7705cf7725cf8745cf8765cf9785df9795df97b5dfa7d5efa7f5efa815ffb835ffb8560fb8761"
    "fc8961fc8a62fc8c63fc8e64fc9065fd9266fd9467fd9668fd9869fd9a6afd9b6bfe9d6cfe9f6dfea16efea36ffea571"
    "fea772fea973feaa74feac76feae77feb078feb27afeb47bfeb67cfeb77efeb97ffebb81febd82febf84fec185fec287"
    "fec488fec68afec88cfeca8dfecc8ffecd90fecf92fed194fed395fed597fed799fed89afdda9cfddc9efddea0fde0a1"
    "fde2a3fde3a5fde5a7fde7a9fde9aafdebacfcecaefceeb0fcf0b2fcf2b4fcf4b6fcf6b8fcf7b9fcf9bbfcfbbdfcfdbf"
)

PLASMA = (
    "0d088710078813078916078a19068c1b068d1d068e20068f2206902406912605912805922a05932c05942e05952f0596"
    "31059733059735049837049938049a3a049a3c049b3e049c3f049c41049d43039e44039e46039f48039f4903a04b03a1"
    "4c02a14e02a25002a25102a35302a35502a45601a45801a45901a55b01a55c01a65e01a66001a66100a76300a76400a7"
    "6600a76700a86900a86a00a86c00a86e00a86f00a87100a87201a87401a87501a87701a87801a87a02a87b02a87d03a8"
    "7e03a88004a88104a78305a78405a78606a68707a68808a68a09a58b0aa58d0ba58e0ca48f0da4910ea3920fa39410a2"
    "9511a19613a19814a099159f9a169f9c179e9d189d9e199da01a9ca11b9ba21d9aa31e9aa51f99a62098a72197a82296"
    "aa2395ab2494ac2694ad2793ae2892b02991b12a90b22b8fb32c8eb42e8db52f8cb6308bb7318ab83289ba3388bb3488"
    "bc3587bd3786be3885bf3984c03a83c13b82c23c81c33d80c43e7fc5407ec6417dc7427cc8437bc9447aca457acb4679"
    "cc4778cc4977cd4a76ce4b75cf4c74d04d73d14e72d24f71d35171d45270d5536fd5546ed6556dd7566cd8576bd9586a"
    "da5a6ada5b69db5c68dc5d67dd5e66de5f65de6164df6263e06363e16462e26561e26660e3685fe4695ee56a5de56b5d"
    "e66c5ce76e5be76f5ae87059e97158e97257ea7457eb7556eb7655ec7754ed7953ed7a52ee7b51ef7c51ef7e50f07f4f"
    "f0804ef1814df1834cf2844bf3854bf3874af48849f48948f58b47f58c46f68d45f68f44f79044f79143f79342f89441"
    "f89540f9973ff9983ef99a3efa9b3dfa9c3cfa9e3bfb9f3afba139fba238fca338fca537fca636fca835fca934fdab33"
    "fdac33fdae32fdaf31fdb130fdb22ffdb42ffdb52efeb72dfeb82cfeba2cfebb2bfebd2afebe2afec029fdc229fdc328"
    "fdc527fdc627fdc827fdca26fdcb26fccd25fcce25fcd025fcd225fbd324fbd524fbd724fad824fada24f9dc24f9dd25"
    "f8df25f8e125f7e225f7e425f6e626f6e826f5e926f5eb27f4ed27f3ee27f3f027f2f227f1f426f1f525f0f724f0f921"
)


def _ramp_table(hex_text: str) -> np.ndarray:
    """256 x 3 channel values as float32."""
    return np.frombuffer(bytes.fromhex(hex_text), np.uint8).reshape(256, 3).astype(F32)


def _spline(table: np.ndarray) -> Gradient:
    n = len(table) - 1
    # Padded so that index i-1 and i+2 always exist: the ends extrapolate (2*v1 - v2), as colorous does.
    padded = np.vstack([2 * table[0] - table[1], table, 2 * table[-1] - table[-2]])

    def evaluate(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = t.astype(F32)
        index = np.minimum(np.floor(np.nan_to_num(t * F32(n), nan=0.0)).astype(np.int64), n - 1)
        t1 = (t - index.astype(F32) / F32(n)) * F32(n)
        t2 = t1 * t1
        t3 = t2 * t1
        v0, v1, v2, v3 = (padded[index + offset] for offset in range(4))
        weights = (
            F32(1) - F32(3) * t1 + F32(3) * t2 - t3,
            F32(4) - F32(6) * t2 + F32(3) * t3,
            F32(1) + F32(3) * t1 + F32(3) * t2 - F32(3) * t3,
            t3,
        )
        value = sum(w[:, None] * v for w, v in zip(weights, (v0, v1, v2, v3), strict=True)) / F32(6)
        channels = _to_byte(value)
        return channels[:, 0], channels[:, 1], channels[:, 2]

    return evaluate


def _turbo(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = t.astype(F32)
    r = F32(34.61) + t * (
        F32(1172.33) - t * (F32(10793.56) - t * (F32(33300.12) - t * (F32(38394.49) - t * F32(14825.05))))
    )
    g = F32(23.31) + t * (F32(557.33) + t * (F32(1225.33) - t * (F32(3574.96) - t * (F32(1073.77) + t * F32(707.56)))))
    b = F32(27.2) + t * (
        F32(3211.1) - t * (F32(15327.97) - t * (F32(27814.0) - t * (F32(22569.18) - t * F32(6838.66))))
    )
    return _to_byte(r), _to_byte(g), _to_byte(b)


def _cividis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = t.astype(F32)
    r = F32(-4.54) - t * (F32(35.34) - t * (F32(2381.73) - t * (F32(6402.7) - t * (F32(7024.72) - t * F32(2710.57)))))
    g = F32(32.49) + t * (F32(170.73) + t * (F32(52.82) - t * (F32(131.46) - t * (F32(176.58) - t * F32(67.37)))))
    b = F32(81.24) + t * (F32(442.36) - t * (F32(2482.43) - t * (F32(6167.24) - t * (F32(6614.94) - t * F32(2475.67)))))
    return _to_byte(r), _to_byte(g), _to_byte(b)


def _to_byte(values: np.ndarray) -> np.ndarray:
    """Rust's saturating float-to-u8 cast: truncation, clamped to 0..=255, NaN to 0."""
    return np.nan_to_num(np.clip(values, 0, 255), nan=0.0).astype(np.uint32)


_GRADIENTS: dict[str, Gradient] = {
    "viridis": _spline(_ramp_table(VIRIDIS)),
    "inferno": _spline(_ramp_table(INFERNO)),
    "magma": _spline(_ramp_table(MAGMA)),
    "plasma": _spline(_ramp_table(PLASMA)),
    "cividis": _cividis,
    "turbo": _turbo,
}


def gradient(name: str) -> Gradient | None:
    """The colormap of that name (ASCII case-insensitive), or None."""
    return _GRADIENTS.get(name.lower() if name.isascii() else name)
