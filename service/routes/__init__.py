"""HTTP routes; each module is a thin shell over ``service.pipeline``."""
