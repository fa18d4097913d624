"""npc-msom: NPC tumour detection and MSOM risk prediction from pre-treatment MRI."""
__version__ = "0.1.0"
