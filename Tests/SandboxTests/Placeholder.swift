// Placeholder so the package loads while the sandbox tests are written; delete when real tests exist.
import Testing
