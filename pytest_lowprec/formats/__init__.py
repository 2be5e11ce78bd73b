"""Low-precision number formats: quantize, dequantize, and the metrics that judge them."""
