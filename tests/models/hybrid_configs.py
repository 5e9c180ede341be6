"""Tiny configs of each transformers hybrid family (no download): awkward sizes, two groups, an
attention layer between Mamba-2 layers, chunks shorter than the test sequences."""

COMMON = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0}

TINY = {
    "bamba": {
        "num_hidden_layers": 3,
        "intermediate_size": 48,
        "attn_layer_indices": [1],
        "mamba_d_state": 12,
        "mamba_n_groups": 2,
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_expand": 2,
        "mamba_chunk_size": 8,
    },
    "granitemoehybrid": {
        "num_hidden_layers": 3,
        "intermediate_size": 48,
        "shared_intermediate_size": 40,
        "num_local_experts": 0,
        "layer_types": ["mamba", "attention", "mamba"],
        "mamba_d_state": 12,
        "mamba_n_groups": 2,
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_expand": 2,
        "mamba_chunk_size": 8,
    },
    "zamba2": {
        "num_hidden_layers": 4,
        "intermediate_size": 48,
        "layers_block_type": ["mamba", "hybrid", "mamba", "mamba"],
        "mamba_d_state": 12,
        "mamba_ngroups": 2,
        "n_mamba_heads": 4,
        "mamba_expand": 2,
        "chunk_size": 8,
        "num_mem_blocks": 1,
        "adapter_rank": 4,
    },
    "nemotron_h": {
        "num_hidden_layers": 4,
        "intermediate_size": 48,
        "hybrid_override_pattern": "M*-M",
        "ssm_state_size": 12,
        "n_groups": 2,
        "mamba_num_heads": 4,
        "mamba_head_dim": 12,
        "chunk_size": 8,
        "head_dim": 8,
    },
    "falcon_h1": {
        "num_hidden_layers": 2,
        "intermediate_size": 48,
        "head_dim": 8,
        "mamba_d_state": 12,
        "mamba_n_groups": 2,
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_d_ssm": 64,
        "mamba_expand": 2,
        "mamba_chunk_size": 8,
        "mamba_norm_before_gate": True,
        "ssm_multipliers": [0.7, 1.3, 0.5, 1.9, 0.8],
        "ssm_in_multiplier": 1.4,
        "projectors_bias": True,
    },
    "jamba": {
        "num_hidden_layers": 4,
        "intermediate_size": 48,
        "attn_layer_period": 4,
        "attn_layer_offset": 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 2,
        "num_experts_per_tok": 1,
        "mamba_d_state": 12,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": 5,
    },
    "falcon_mamba": {
        "num_hidden_layers": 2,
        "state_size": 12,
        "expand": 2,
        "time_step_rank": 5,
        "conv_kernel": 4,
    },
}

# families whose config has no attention heads
NO_ATTENTION = {"falcon_mamba"}


def tiny_config(model_type: str, vocab_size: int = 97) -> dict:
    """The stock config fields (with ``model_type``) of a tiny ``model_type`` model."""
    common = {"hidden_size": 32, "pad_token_id": 0} if model_type in NO_ATTENTION else COMMON
    return {"model_type": model_type, "vocab_size": vocab_size, **common, **TINY[model_type]}
