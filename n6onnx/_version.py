"""The package version, in a leaf module so that any module can report it without importing the
package root (which imports the API)."""

__version__ = "0.1.0"
