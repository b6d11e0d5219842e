from pinlab_tasks.cli import main

main()
