# The quick example from FlashAttention-Plus's README, unchanged except that it runs on the GPU
# when there is one and on the CPU otherwise (fp16 works on both).
import os, torch
os.environ["FLASH_ATTENTION_USE_FLAGGEMS"] = "TRUE"      # enable the FlagGems backend (used when installed)
from flash_attn import flash_attn_func
device = 'cuda' if torch.cuda.is_available() else 'cpu'
batch_size, seq_len, num_heads, head_dim = 2, 1024, 16, 64   # tensors must be fp16 or bf16
q = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=torch.float16)
k = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=torch.float16)
v = torch.randn(batch_size, seq_len, num_heads, head_dim, device=device, dtype=torch.float16)
output = flash_attn_func(q, k, v, causal=True)
print(f"output shape: {output.shape}")
