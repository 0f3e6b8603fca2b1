__all__ = ['ttypes', 'constants', 'meta']
