def main() -> None:
    print("pinlab")
