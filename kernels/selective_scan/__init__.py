from .reference import selective_scan_ref, selective_state_update_ref

__all__ = ["selective_scan_ref", "selective_state_update_ref"]
